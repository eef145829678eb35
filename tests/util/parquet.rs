//! A Parquet file read back whole with the parquet crate's own reader (no Arrow): every
//! column by name, nulls as `None`, and the row groups' sizes.
#![allow(dead_code)]

use std::path::Path;

use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, SerializedFileReader};

/// One column's values over the whole file.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Bool(Vec<Option<bool>>),
    I32(Vec<Option<i32>>),
    I64(Vec<Option<i64>>),
    F32(Vec<Option<f32>>),
    F64(Vec<Option<f64>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

/// The file: columns in schema order, rows per row group, footer metadata.
pub struct File {
    pub names: Vec<String>,
    pub columns: Vec<Column>,
    pub row_groups: Vec<usize>,
    pub metadata: Vec<(String, String)>,
}

/// Values and definition levels into one `Option` per row.
fn spread<T: Clone>(values: Vec<T>, defs: &[i16], optional: bool) -> Vec<Option<T>> {
    if !optional {
        return values.into_iter().map(Some).collect();
    }
    let mut it = values.into_iter();
    defs.iter().map(|&d| if d == 1 { it.next() } else { None }).collect()
}

impl File {
    pub fn read(path: &Path) -> File {
        let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reader = SerializedFileReader::new(f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let meta = reader.metadata();
        let schema = meta.file_metadata().schema_descr();
        let names: Vec<String> = schema.columns().iter().map(|c| c.name().to_string()).collect();
        let mut columns: Vec<Option<Column>> = vec![None; names.len()];
        let mut row_groups = Vec::new();
        for g in 0..reader.num_row_groups() {
            let rg = reader.get_row_group(g).unwrap();
            let rows = rg.metadata().num_rows() as usize;
            row_groups.push(rows);
            for (c, slot) in columns.iter_mut().enumerate() {
                let optional = schema.column(c).max_def_level() > 0;
                let mut defs = Vec::new();
                macro_rules! read {
                    ($r:expr, $variant:ident, $conv:expr) => {{
                        let mut values = Vec::new();
                        let (n, _, _) =
                            $r.read_records(rows, optional.then_some(&mut defs), None, &mut values).unwrap();
                        assert_eq!(n, rows, "column {} of row group {g}", names[c]);
                        let vals = spread(values.into_iter().map($conv).collect(), &defs, optional);
                        match slot.get_or_insert_with(|| Column::$variant(Vec::new())) {
                            Column::$variant(all) => all.extend(vals),
                            _ => unreachable!(),
                        }
                    }};
                }
                match rg.get_column_reader(c).unwrap() {
                    ColumnReader::BoolColumnReader(mut r) => read!(r, Bool, |v| v),
                    ColumnReader::Int32ColumnReader(mut r) => read!(r, I32, |v| v),
                    ColumnReader::Int64ColumnReader(mut r) => read!(r, I64, |v| v),
                    ColumnReader::FloatColumnReader(mut r) => read!(r, F32, |v| v),
                    ColumnReader::DoubleColumnReader(mut r) => read!(r, F64, |v| v),
                    ColumnReader::ByteArrayColumnReader(mut r) => {
                        read!(r, Bytes, |v: parquet::data_type::ByteArray| v.data().to_vec())
                    }
                    _ => panic!("column {}: an unexpected type (INT96 or fixed-length bytes)", names[c]),
                }
            }
        }
        let metadata = meta
            .file_metadata()
            .key_value_metadata()
            .map(|kv| kv.iter().map(|k| (k.key.clone(), k.value.clone().unwrap_or_default())).collect())
            .unwrap_or_default();
        File {
            names,
            columns: columns.into_iter().map(|c| c.expect("a row group")).collect(),
            row_groups,
            metadata,
        }
    }

    pub fn rows(&self) -> usize {
        self.row_groups.iter().sum()
    }

    pub fn column(&self, name: &str) -> &Column {
        let i = self.names.iter().position(|n| n == name).unwrap_or_else(|| panic!("no column {name}"));
        &self.columns[i]
    }

    /// A float column's values, as their bits.
    pub fn f32_bits(&self, name: &str) -> Vec<u32> {
        match self.column(name) {
            Column::F32(v) => v.iter().map(|x| x.expect("required").to_bits()).collect(),
            c => panic!("{name} is not float: {c:?}"),
        }
    }

    pub fn f64s(&self, name: &str) -> Vec<Option<f64>> {
        match self.column(name) {
            Column::F64(v) => v.clone(),
            c => panic!("{name} is not double: {c:?}"),
        }
    }

    pub fn i64s(&self, name: &str) -> Vec<i64> {
        match self.column(name) {
            Column::I64(v) => v.iter().map(|x| x.expect("required")).collect(),
            c => panic!("{name} is not int64: {c:?}"),
        }
    }

    pub fn i32s(&self, name: &str) -> Vec<Option<i32>> {
        match self.column(name) {
            Column::I32(v) => v.clone(),
            c => panic!("{name} is not int32: {c:?}"),
        }
    }

    pub fn bools(&self, name: &str) -> Vec<bool> {
        match self.column(name) {
            Column::Bool(v) => v.iter().map(|x| x.expect("required")).collect(),
            c => panic!("{name} is not bool: {c:?}"),
        }
    }

    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.column(name) {
            Column::Bytes(v) => {
                v.iter().map(|x| String::from_utf8(x.clone().expect("required")).unwrap()).collect()
            }
            c => panic!("{name} is not a string: {c:?}"),
        }
    }
}
