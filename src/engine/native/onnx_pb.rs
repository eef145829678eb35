//! The part of ONNX's protobuf schema (`onnx/onnx.proto`) the native evaluators read:
//! nodes, attributes and initializers. Decoded with `prost` from message structs
//! written here with the schema's field numbers (no code generation, no `protoc`);
//! fields not listed are skipped by the decoder.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    pub domain: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// 1 = EXTERNAL (data in another file): not read here.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
pub const INT64: i32 = 7;

impl ModelProto {
    /// Decode an `.onnx` file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<ModelProto, String> {
        ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))
    }
}

impl TensorProto {
    /// Element count from `dims`.
    pub fn elements(&self) -> usize {
        // Saturating: dims whose product overflows name more values than any tensor holds,
        // so the length check below refuses them (a hostile file cannot wrap it to 0).
        self.dims.iter().fold(1usize, |n, &d| n.saturating_mul(d.max(0) as usize))
    }

    /// The values of a float32 tensor (raw little-endian bytes or `float_data`).
    pub fn floats(&self) -> Result<Vec<f32>, String> {
        if self.data_type != FLOAT {
            return Err(format!("tensor `{}` is not float32 (data type {})", self.name, self.data_type));
        }
        if self.data_location == 1 {
            return Err(format!("tensor `{}` keeps its data in an external file", self.name));
        }
        let v: Vec<f32> = if self.raw_data.is_empty() {
            self.float_data.clone()
        } else {
            self.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        };
        if v.len() != self.elements() {
            return Err(format!("tensor `{}` holds {} values for dims {:?}", self.name, v.len(), self.dims));
        }
        Ok(v)
    }

    /// The values of an int64 tensor.
    pub fn ints(&self) -> Result<Vec<i64>, String> {
        if self.data_type != INT64 {
            return Err(format!("tensor `{}` is not int64 (data type {})", self.name, self.data_type));
        }
        let v: Vec<i64> = if self.raw_data.is_empty() {
            self.int64_data.clone()
        } else {
            self.raw_data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect()
        };
        if v.len() != self.elements() {
            return Err(format!("tensor `{}` holds {} values for dims {:?}", self.name, v.len(), self.dims));
        }
        Ok(v)
    }
}

impl NodeProto {
    /// Attribute `name`, if set.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }
}
