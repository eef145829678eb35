//! The Parquet file `tickinfer features` writes: its schema, and one row group at a time
//! through parquet's low-level column writers (no Arrow in the build).
//!
//! Columns, in order: `timestamp_ns` (int64, the request's), `symbol` (string, dictionary
//! encoded), `symbol_id` (uint16 as int32), `mid_price` (double, price units), `warming`
//! (bool), one float32 column per manifest feature, named as the manifest names it (the
//! model's input row), then `label` (int8 as int32: -1 sell, 0 flat, 1 buy; null when not
//! known) and `label_return_bps` (double, null likewise). Snappy pages; dictionaries only
//! where values repeat; row-group statistics on the key columns.

use std::io::Write;
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DataType, DoubleType, FloatType, Int32Type, Int64Type,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use parquet::format::KeyValue;
use parquet::schema::types::{ColumnPath, Type};

pub const TIMESTAMP: &str = "timestamp_ns";
pub const SYMBOL: &str = "symbol";
pub const SYMBOL_ID: &str = "symbol_id";
pub const MID: &str = "mid_price";
pub const WARMING: &str = "warming";
pub const LABEL: &str = "label";
pub const LABEL_RETURN: &str = "label_return_bps";

/// The columns around the features, in file order (features go after `WARMING`).
pub const BEFORE: [&str; 5] = [TIMESTAMP, SYMBOL, SYMBOL_ID, MID, WARMING];
pub const AFTER: [&str; 2] = [LABEL, LABEL_RETURN];

/// One row group's columns, borrowed from the buffered rows: `x` row-major, `width` per row;
/// `label` [`NO_LABEL`] where unknown (its `label_return` then unused).
pub struct Group<'a> {
    pub ts: &'a [i64],
    pub symbol: &'a [u16],
    pub mid: &'a [f64],
    pub warming: &'a [bool],
    pub x: &'a [f32],
    pub label: &'a [i8],
    pub label_return: &'a [f64],
}

/// `label` of a row whose label is not known (null in the file).
pub const NO_LABEL: i8 = i8::MIN;

/// The file being written.
pub struct Writer<W: Write + Send> {
    inner: SerializedFileWriter<W>,
    width: usize,
    /// Symbol names by id (a string column value each; cloned per row: a reference count).
    names: Vec<ByteArray>,
    // Scratch columns, reused for every group.
    f32s: Vec<f32>,
    i32s: Vec<i32>,
    f64s: Vec<f64>,
    defs: Vec<i16>,
    strings: Vec<ByteArray>,
}

fn column(
    name: &str,
    physical: Physical,
    logical: Option<LogicalType>,
    optional: bool,
) -> Result<Type, String> {
    Type::primitive_type_builder(name, physical)
        .with_logical_type(logical)
        .with_repetition(if optional { Repetition::OPTIONAL } else { Repetition::REQUIRED })
        .build()
        .map_err(|e| format!("column {name}: {e}"))
}

/// The file's schema for `features` (their manifest names: each must be unique, and none
/// may be one of the other columns' names).
pub fn schema(features: &[String]) -> Result<Type, String> {
    for (i, f) in features.iter().enumerate() {
        if features[..i].contains(f) || BEFORE.contains(&f.as_str()) || AFTER.contains(&f.as_str()) {
            return Err(format!(
                "feature `{f}` is listed twice, or is the name of another column: the Parquet columns are \
                 named by feature"
            ));
        }
    }
    let int = |bits, signed| Some(LogicalType::Integer { bit_width: bits, is_signed: signed });
    let mut fields = vec![
        column(TIMESTAMP, Physical::INT64, None, false)?,
        column(SYMBOL, Physical::BYTE_ARRAY, Some(LogicalType::String), false)?,
        column(SYMBOL_ID, Physical::INT32, int(16, false), false)?,
        column(MID, Physical::DOUBLE, None, false)?,
        column(WARMING, Physical::BOOLEAN, None, false)?,
    ];
    for f in features {
        fields.push(column(f, Physical::FLOAT, None, false)?);
    }
    fields.push(column(LABEL, Physical::INT32, int(8, true), true)?);
    fields.push(column(LABEL_RETURN, Physical::DOUBLE, None, true)?);
    Type::group_type_builder("tickinfer_features")
        .with_fields(fields.into_iter().map(Arc::new).collect())
        .build()
        .map_err(|e| e.to_string())
}

impl<W: Write + Send> Writer<W> {
    /// Start a file on `sink` with the columns for `features` and `metadata` (key, value) in
    /// its footer.
    pub fn new(sink: W, features: &[String], metadata: Vec<(String, String)>) -> Result<Writer<W>, String> {
        let schema = Arc::new(schema(features)?);
        let mut props = WriterProperties::builder()
            .set_created_by(format!("tickinfer {} (parquet-rs 55.2.0)", env!("CARGO_PKG_VERSION")))
            .set_compression(Compression::SNAPPY)
            // Features and prices barely repeat: a dictionary would hash every value to fall
            // back to plain pages anyway. Symbols and labels repeat.
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_key_value_metadata(Some(metadata.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect()));
        for c in [SYMBOL, SYMBOL_ID, LABEL] {
            props = props.set_column_dictionary_enabled(ColumnPath::from(c), true);
        }
        for c in [TIMESTAMP, SYMBOL, SYMBOL_ID] {
            props = props.set_column_statistics_enabled(ColumnPath::from(c), EnabledStatistics::Chunk);
        }
        let inner =
            SerializedFileWriter::new(sink, schema, Arc::new(props.build())).map_err(|e| e.to_string())?;
        Ok(Writer {
            inner,
            width: features.len(),
            names: Vec::new(),
            f32s: Vec::new(),
            i32s: Vec::new(),
            f64s: Vec::new(),
            defs: Vec::new(),
            strings: Vec::new(),
        })
    }

    /// Symbol `id` is called `name` in the `symbol` column.
    pub fn name_symbol(&mut self, id: u16, name: &str) {
        if self.names.len() <= id as usize {
            self.names.resize(id as usize + 1, ByteArray::from(""));
        }
        self.names[id as usize] = ByteArray::from(name);
    }

    /// Write `g` as one row group.
    pub fn write_group(&mut self, g: &Group<'_>) -> Result<(), String> {
        let n = g.ts.len();
        debug_assert!(g.x.len() == n * self.width && g.label.len() == n);
        let Writer { inner, width, names, f32s, i32s, f64s, defs, strings } = self;
        let mut rg = inner.next_row_group().map_err(|e| e.to_string())?;
        put::<Int64Type, W>(&mut rg, g.ts, None)?;
        strings.clear();
        strings.extend(g.symbol.iter().map(|&id| names.get(id as usize).cloned().unwrap_or_default()));
        put::<ByteArrayType, W>(&mut rg, strings, None)?;
        i32s.clear();
        i32s.extend(g.symbol.iter().map(|&id| id as i32));
        put::<Int32Type, W>(&mut rg, i32s, None)?;
        put::<DoubleType, W>(&mut rg, g.mid, None)?;
        put::<BoolType, W>(&mut rg, g.warming, None)?;
        for c in 0..*width {
            f32s.clear();
            f32s.extend(g.x.iter().skip(c).step_by(*width));
            put::<FloatType, W>(&mut rg, f32s, None)?;
        }
        defs.clear();
        defs.extend(g.label.iter().map(|&l| i16::from(l != NO_LABEL)));
        i32s.clear();
        i32s.extend(g.label.iter().filter(|&&l| l != NO_LABEL).map(|&l| l as i32));
        put::<Int32Type, W>(&mut rg, i32s, Some(defs))?;
        f64s.clear();
        f64s.extend(g.label.iter().zip(g.label_return).filter(|(&l, _)| l != NO_LABEL).map(|(_, &r)| r));
        put::<DoubleType, W>(&mut rg, f64s, Some(defs))?;
        rg.close().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Write the footer; the sink back.
    pub fn close(self) -> Result<W, String> {
        self.inner.into_inner().map_err(|e| e.to_string())
    }
}

/// The row group's next column: `values` (the non-null ones), `defs` for an optional column.
fn put<T: DataType, W: Write + Send>(
    rg: &mut SerializedRowGroupWriter<'_, W>,
    values: &[T::T],
    defs: Option<&[i16]>,
) -> Result<(), String> {
    let mut col =
        rg.next_column().map_err(|e| e.to_string())?.ok_or("more columns written than the schema has")?;
    col.typed::<T>().write_batch(values, defs, None).map_err(|e| e.to_string())?;
    col.close().map_err(|e| e.to_string())
}
