//! `index export --parquet`: the index as one Parquet table, one record per (model, row), for
//! DuckDB, Spark or pandas to query at hub scale.
//!
//! Columns: `model` (the index's model id), `path`, `name`, `arch`, `scale`, `sha256`
//! (null for folders), `row` (position in the fingerprint), `label` (`IN04`, `TE1`, ...),
//! `component`, `params`, `norm2`, `seed`, `buckets`, and `sketch` (a repeated DOUBLE: the
//! 4096 buckets, a list in DuckDB). Uncompressed (the sketches are dense doubles); one row
//! group per 32 models, so memory stays at 32 fingerprints whatever the index size.

use std::sync::Arc;

use parquet::basic::{ConvertedType, Repetition, Type as Physical};

const OPTIONAL: Repetition = Repetition::OPTIONAL;
const REPEATED: Repetition = Repetition::REPEATED;
const REQUIRED: Repetition = Repetition::REQUIRED;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use ckpt_ops::index::{Entry, Record};
use ckpt_ops::sketch::Fingerprint;

/// Models per row group.
pub(crate) const MODELS_PER_GROUP: usize = 32;

fn schema() -> Type {
    let field = |name: &str, t: Physical, rep: Repetition, utf8: bool| {
        let mut b = Type::primitive_type_builder(name, t).with_repetition(rep);
        if utf8 {
            b = b.with_converted_type(ConvertedType::UTF8);
        }
        Arc::new(b.build().expect("a valid field"))
    };
    const BYTE_ARRAY: Physical = Physical::BYTE_ARRAY;
    const DOUBLE: Physical = Physical::DOUBLE;
    const INT32: Physical = Physical::INT32;
    const INT64: Physical = Physical::INT64;
    Type::group_type_builder("ckpt_diff_index")
        .with_fields(vec![
            field("model", INT64, REQUIRED, false),
            field("path", BYTE_ARRAY, REQUIRED, true),
            field("name", BYTE_ARRAY, REQUIRED, true),
            field("arch", BYTE_ARRAY, REQUIRED, true),
            field("scale", INT32, REQUIRED, false),
            field("sha256", BYTE_ARRAY, OPTIONAL, true),
            field("row", INT32, REQUIRED, false),
            field("label", BYTE_ARRAY, REQUIRED, true),
            field("component", BYTE_ARRAY, REQUIRED, true),
            field("params", INT64, REQUIRED, false),
            field("norm2", DOUBLE, REQUIRED, false),
            field("seed", INT64, REQUIRED, false),
            field("buckets", INT32, REQUIRED, false),
            field("sketch", DOUBLE, REPEATED, false),
        ])
        .build()
        .expect("a valid schema")
}

/// The columns of one row group.
#[derive(Default)]
struct Batch {
    model: Vec<i64>,
    path: Vec<ByteArray>,
    name: Vec<ByteArray>,
    arch: Vec<ByteArray>,
    scale: Vec<i32>,
    sha256: Vec<ByteArray>,
    sha256_def: Vec<i16>,
    row: Vec<i32>,
    label: Vec<ByteArray>,
    component: Vec<ByteArray>,
    params: Vec<i64>,
    norm2: Vec<f64>,
    seed: Vec<i64>,
    buckets: Vec<i32>,
    sketch: Vec<f64>,
    sketch_def: Vec<i16>,
    sketch_rep: Vec<i16>,
    models: usize,
}

impl Batch {
    fn push(&mut self, e: &Entry, fp: &Fingerprint) {
        for (i, r) in fp.rows.iter().enumerate() {
            self.model.push(e.id);
            self.path.push(e.record.path.as_str().into());
            self.name.push(e.record.name.as_str().into());
            self.arch.push(Record::arch_name(e.record.arch).into());
            self.scale.push(e.record.scale as i32);
            match &e.record.sha256 {
                Some(h) => {
                    self.sha256.push(h.as_str().into());
                    self.sha256_def.push(1);
                }
                None => self.sha256_def.push(0),
            }
            self.row.push(i as i32);
            self.label.push(r.label.as_str().into());
            self.component.push(r.component.as_str().into());
            self.params.push(r.params as i64);
            self.norm2.push(r.norm2);
            self.seed.push(ckpt_ops::sketch::SEED as i64);
            self.buckets.push(r.sketch.len() as i32);
            for (j, x) in r.sketch.iter().enumerate() {
                self.sketch.push(*x);
                self.sketch_def.push(1);
                self.sketch_rep.push(if j == 0 { 0 } else { 1 });
            }
        }
        self.models += 1;
    }
}

/// Writes the models `next` yields (entry and fingerprint, in order) as Parquet into `out`;
/// returns the number of records (model rows) written.
pub(crate) fn write<W, E>(
    out: W,
    mut next: impl FnMut() -> Option<Result<(Entry, Fingerprint), E>>,
) -> Result<u64, ExportError<E>>
where
    W: std::io::Write + Send,
{
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer = SerializedFileWriter::new(out, Arc::new(schema()), props)?;
    let mut records = 0u64;
    loop {
        let mut batch = Batch::default();
        while batch.models < MODELS_PER_GROUP {
            match next() {
                Some(got) => {
                    let (e, fp) = got.map_err(ExportError::Source)?;
                    batch.push(&e, &fp);
                }
                None => break,
            }
        }
        if batch.models == 0 {
            break;
        }
        records += batch.row.len() as u64;
        let mut rg = writer.next_row_group()?;
        let mut column = 0;
        while let Some(mut col) = rg.next_column()? {
            let b = &batch;
            match column {
                0 => col.typed::<Int64Type>().write_batch(&b.model, None, None)?,
                1 => col
                    .typed::<ByteArrayType>()
                    .write_batch(&b.path, None, None)?,
                2 => col
                    .typed::<ByteArrayType>()
                    .write_batch(&b.name, None, None)?,
                3 => col
                    .typed::<ByteArrayType>()
                    .write_batch(&b.arch, None, None)?,
                4 => col.typed::<Int32Type>().write_batch(&b.scale, None, None)?,
                5 => col.typed::<ByteArrayType>().write_batch(
                    &b.sha256,
                    Some(&b.sha256_def),
                    None,
                )?,
                6 => col.typed::<Int32Type>().write_batch(&b.row, None, None)?,
                7 => col
                    .typed::<ByteArrayType>()
                    .write_batch(&b.label, None, None)?,
                8 => col
                    .typed::<ByteArrayType>()
                    .write_batch(&b.component, None, None)?,
                9 => col
                    .typed::<Int64Type>()
                    .write_batch(&b.params, None, None)?,
                10 => col
                    .typed::<DoubleType>()
                    .write_batch(&b.norm2, None, None)?,
                11 => col.typed::<Int64Type>().write_batch(&b.seed, None, None)?,
                12 => col
                    .typed::<Int32Type>()
                    .write_batch(&b.buckets, None, None)?,
                _ => col.typed::<DoubleType>().write_batch(
                    &b.sketch,
                    Some(&b.sketch_def),
                    Some(&b.sketch_rep),
                )?,
            };
            col.close()?;
            column += 1;
        }
        rg.close()?;
    }
    writer.close()?;
    Ok(records)
}

/// Why an export failed: the Parquet writer, or reading the index.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError<E> {
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{0}")]
    Source(E),
}
