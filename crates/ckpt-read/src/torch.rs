//! PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) read without executing them.
//!
//! Two containers exist:
//! * **zip** (`torch.save` since 1.6): `PREFIX/data.pkl` (the pickle), `PREFIX/data/KEY`
//!   (one raw storage per key, almost always stored uncompressed, so used in place from the
//!   memory map), `PREFIX/version`, and since torch 2.x `PREFIX/byteorder`;
//! * **legacy** (torch < 1.6): five pickles in a row (magic number, protocol version,
//!   system info with the byte order, the data, the sorted storage keys), then each storage
//!   as a little-endian `u64` element count and its bytes.
//!
//! Either way the data pickle holds `_rebuild_tensor_v2(storage, offset, size, stride, ...)`
//! records whose storage is a persistent id `('storage', torch.HalfStorage, KEY, location,
//! numel[, view])`. [`read`] interprets the pickle with [`super::pickle`] (nothing runs),
//! finds the state dict, and returns every tensor with the byte range of its storage.

use std::collections::HashMap;
use std::io::Read;

use super::dtype::Dtype;
use super::pickle::{self, GlobalUse, Id, Node, Pickle};

/// Which torch container a file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Container {
    Zip { pickle: String },
    Legacy,
}

impl Container {
    pub fn id(&self) -> &'static str {
        match self {
            Container::Zip { .. } => "torch-zip",
            Container::Legacy => "torch-legacy",
        }
    }
}

/// Where a storage's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageBytes {
    /// At this byte range of the file, as stored.
    InPlace { begin: usize, len: usize },
    /// In a compressed zip member: decompressed on open.
    Compressed { member: String, len: usize },
}

impl StorageBytes {
    /// Bytes of the storage.
    pub fn byte_len(&self) -> usize {
        match self {
            StorageBytes::InPlace { len, .. } | StorageBytes::Compressed { len, .. } => *len,
        }
    }
}

/// One tensor of the state dict, as its record says.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Strides and offset in elements.
    pub stride: Vec<usize>,
    pub offset: usize,
    /// Index into [`TorchFile::storages`].
    pub storage: usize,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Row-major with no gaps (size-1 dimensions may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&n, &s) in self.shape.iter().zip(&self.stride).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(n);
        }
        true
    }
}

/// One storage: its element type and bytes.
#[derive(Clone, Debug)]
pub struct Storage {
    pub key: String,
    pub dtype: Dtype,
    pub bytes: StorageBytes,
}

/// A top-level entry that is not part of the state dict (kept out of every output).
#[derive(Clone, Debug, serde::Serialize)]
pub struct OtherEntry {
    pub key: String,
    pub what: String,
}

/// What a torch file holds.
#[derive(Debug)]
pub struct TorchFile {
    pub container: Container,
    pub tensors: Vec<Tensor>,
    pub storages: Vec<Storage>,
    pub globals: Vec<GlobalUse>,
    /// `epoch`, `global_step` and other scalar top-level entries, as text.
    pub metadata: Vec<(String, String)>,
    /// Other top-level entries (optimizer states, callbacks, ...), described.
    pub other: Vec<OtherEntry>,
    /// Where the state dict was found ("" for the top level, else its key path).
    pub state_dict_at: String,
    pub big_endian: bool,
}

/// What is wrong with a torch file.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("its pickle ({member}) is unreadable {source}")]
    Pickle {
        member: String,
        source: pickle::PickleError,
    },
    #[error("the zip container is unreadable: {0}")]
    Zip(String),
    #[error("{0}")]
    Layout(String),
}

fn malformed<T>(what: impl Into<String>) -> Result<T, TorchError> {
    Err(TorchError::Layout(what.into()))
}

/// Largest pickle accepted (an SDXL `data.pkl` with EMA is about 1 MB).
pub const MAX_PICKLE_BYTES: u64 = 512 << 20;

/// Reads a torch file from its bytes: `zip` tells which container the first bytes said.
pub fn read(bytes: &[u8], zip: bool) -> Result<TorchFile, TorchError> {
    if zip {
        read_zip(bytes)
    } else {
        read_legacy(bytes)
    }
}

fn zip_err(e: impl std::fmt::Display) -> TorchError {
    TorchError::Zip(e.to_string())
}

fn read_zip(bytes: &[u8]) -> Result<TorchFile, TorchError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zip_err)?;
    // Name -> (index, data start, stored size, uncompressed size, stored?).
    let mut members: HashMap<String, (usize, u64, u64, u64, bool)> = HashMap::new();
    for i in 0..archive.len() {
        let f = archive.by_index_raw(i).map_err(zip_err)?;
        if f.encrypted() {
            return Err(TorchError::Zip(format!(
                "member {} is encrypted",
                f.name().unwrap_or_default()
            )));
        }
        let name = f.name().map_err(zip_err)?.into_owned();
        let start = f.data_start().unwrap_or(0);
        let stored = f.compression() == zip::CompressionMethod::Stored;
        members.insert(name, (i, start, f.compressed_size(), f.size(), stored));
    }
    let pickles: Vec<&String> = members
        .keys()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let pickle_name = match pickles.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(TorchError::Zip(
                "there is no PREFIX/data.pkl member: this zip is not a torch checkpoint".into(),
            ));
        }
        _ => return Err(TorchError::Zip("there are several data.pkl members".into())),
    };
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let read_member = |archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
                       name: &str,
                       limit: u64|
     -> Result<Vec<u8>, TorchError> {
        let (i, start, csize, size, stored) = members[name];
        if size > limit {
            return Err(TorchError::Zip(format!(
                "member {name} is {size} bytes, more than the {limit} allowed"
            )));
        }
        if stored {
            let end = start
                .checked_add(csize)
                .filter(|&e| e <= bytes.len() as u64);
            return match end {
                Some(end) => Ok(bytes[start as usize..end as usize].to_vec()),
                None => Err(TorchError::Zip(format!(
                    "member {name} runs past the file's end"
                ))),
            };
        }
        let mut out = Vec::new();
        let f = archive.by_index(i).map_err(zip_err)?;
        f.take(limit + 1).read_to_end(&mut out).map_err(zip_err)?;
        if out.len() as u64 != size {
            return Err(TorchError::Zip(format!(
                "member {name} does not decompress to its size"
            )));
        }
        Ok(out)
    };
    let pkl = read_member(&mut archive, &pickle_name, MAX_PICKLE_BYTES)?;

    // Offsets count in the member, as pickletools and scanners give them.
    let p =
        pickle::parse(&pkl, 0, pickle::Limits::default()).map_err(|source| TorchError::Pickle {
            member: pickle_name.clone(),
            source,
        })?;
    let big_endian = match members.get(&format!("{prefix}byteorder")) {
        Some(_) => {
            let b = read_member(&mut archive, &format!("{prefix}byteorder"), 16)?;
            match b.as_slice() {
                b"little" => false,
                b"big" => true,
                other => {
                    return malformed(format!(
                        "its byteorder member says {:?}, neither little nor big",
                        String::from_utf8_lossy(other)
                    ));
                }
            }
        }
        None => false,
    };
    let locate = |key: &str, _numel: u64, _dtype: Dtype| -> Result<StorageBytes, TorchError> {
        let name = format!("{prefix}data/{key}");
        let Some(&(_, start, csize, size, stored)) = members.get(&name) else {
            return malformed(format!("storage {key} has no member {name} in the zip"));
        };
        if stored {
            let end = start
                .checked_add(csize)
                .filter(|&e| e <= bytes.len() as u64);
            if end.is_none() {
                return malformed(format!(
                    "storage member {name} runs past the end of the file: the file is truncated"
                ));
            }
            Ok(StorageBytes::InPlace {
                begin: start as usize,
                len: csize as usize,
            })
        } else {
            Ok(StorageBytes::Compressed {
                member: name,
                len: size as usize,
            })
        }
    };
    let mut f = build(
        &p,
        &locate,
        Container::Zip {
            pickle: pickle_name,
        },
    )?;
    f.big_endian = big_endian;
    Ok(f)
}

/// The bytes of a compressed zip member (at most `len` of them).
pub fn decompress(bytes: &[u8], member: &str, len: usize) -> Result<Vec<u8>, TorchError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zip_err)?;
    let f = archive.by_name(member).map_err(zip_err)?;
    let mut out = Vec::with_capacity(len.min(1 << 30));
    f.take(len as u64).read_to_end(&mut out).map_err(zip_err)?;
    if out.len() != len {
        return Err(TorchError::Zip(format!(
            "member {member} does not decompress to its size"
        )));
    }
    Ok(out)
}

/// The magic number legacy `torch.save` writes first: 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn read_legacy(bytes: &[u8]) -> Result<TorchFile, TorchError> {
    let limits = pickle::Limits::default();
    let mut at = 0usize;
    let mut next = |what: &str| -> Result<(Pickle, u64), TorchError> {
        let p = pickle::parse(&bytes[at..], at as u64, limits).map_err(|source| {
            TorchError::Pickle {
                member: what.to_string(),
                source,
            }
        })?;
        let start = at as u64;
        at += p.end;
        Ok((p, start))
    };
    let (magic, _) = next("the magic number")?;
    if magic.node(magic.root) != &Node::BigInt(LEGACY_MAGIC.to_vec()) {
        return malformed(
            "it is a pickle but not a torch checkpoint (no torch magic number): ckpt-diff reads \
             torch.save files only",
        );
    }
    let (version, _) = next("the protocol version")?;
    if version.as_int(version.root) != Some(1001) {
        return malformed(format!(
            "its legacy protocol version is {}, not 1001",
            version.describe(version.root)
        ));
    }
    let (info, _) = next("the system info")?;
    let big_endian = info
        .get(info.root, "little_endian")
        .map(|v| info.node(v) == &Node::Bool(false))
        .unwrap_or(false);
    let (data, _) = next("the data pickle")?;
    let (keys, _) = next("the storage key list")?;
    let Some(key_ids) = keys.items(keys.root) else {
        return malformed("its storage key list is not a list");
    };
    let key_list: Vec<String> = key_ids
        .iter()
        .map(|&k| keys.as_str(k).map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| TorchError::Layout("a storage key is not a string".into()))?;

    // The storages follow in key-list order; their element sizes come from the records.
    let sizes = storage_types(&data)?;
    let mut places: HashMap<String, (usize, usize)> = HashMap::new();
    for key in &key_list {
        let Some(&dtype) = sizes.get(key) else {
            return malformed(format!(
                "storage {key} is listed but no tensor names its type"
            ));
        };
        let Some(count) = bytes.get(at..at + 8) else {
            return malformed(format!(
                "storage {key} starts past the end of the file: the file is truncated"
            ));
        };
        let numel = u64::from_le_bytes(count.try_into().expect("8"));
        let esize = (super::dtype::bit_size(dtype) / 8) as u64;
        let len = numel
            .checked_mul(esize)
            .filter(|&l| l <= (bytes.len() - at - 8) as u64);
        let Some(len) = len else {
            return malformed(format!(
                "storage {key} says {numel} elements, more than the file holds: the file is \
                 truncated"
            ));
        };
        places.insert(key.clone(), (at + 8, len as usize));
        at += 8 + len as usize;
    }
    let locate = |key: &str, _numel: u64, _dtype: Dtype| match places.get(key) {
        Some(&(begin, len)) => Ok(StorageBytes::InPlace { begin, len }),
        None => malformed(format!("storage {key} is not in the storage key list")),
    };
    let mut f = build(&data, &locate, Container::Legacy)?;
    f.big_endian = big_endian;
    Ok(f)
}

/// Storage key -> dtype, from every persistent id in the pickle.
fn storage_types(p: &Pickle) -> Result<HashMap<String, Dtype>, TorchError> {
    let mut out = HashMap::new();
    for id in 0..p.nodes.len() as Id {
        if let Node::PersId(pid) = p.node(id) {
            let s = persistent_storage(p, *pid)?;
            out.insert(s.key, s.dtype);
            if let Some((view, _)) = s.view {
                out.insert(view, s.dtype);
            }
        }
    }
    Ok(out)
}

struct PersistentStorage {
    key: String,
    dtype: Dtype,
    numel: u64,
    /// A legacy storage view: (view key, element offset into the root storage).
    view: Option<(String, u64)>,
}

fn persistent_storage(p: &Pickle, pid: Id) -> Result<PersistentStorage, TorchError> {
    let Some(items) = p.items(pid) else {
        return malformed(format!(
            "a storage reference is {}, not a tuple",
            p.describe(pid)
        ));
    };
    if items.len() < 5 || p.as_str(items[0]) != Some("storage") {
        return malformed("a storage reference is not ('storage', type, key, location, numel)");
    }
    let Some(g) = p.global(items[1]) else {
        return malformed("a storage reference has no storage type");
    };
    let dtype = storage_dtype(&g.module, &g.name).ok_or_else(|| {
        TorchError::Layout(format!("storage type {} is not supported", g.dotted()))
    })?;
    let key = match p.node(items[2]) {
        Node::Str(s) => s.clone(),
        Node::Int(i) => i.to_string(),
        _ => return malformed("a storage key is not a string"),
    };
    let numel = p
        .as_int(items[4])
        .filter(|&n| n >= 0)
        .ok_or_else(|| TorchError::Layout(format!("storage {key} has no element count")))?
        as u64;
    let view = match items.get(5).and_then(|&v| p.items(v)) {
        Some(v) if v.len() >= 2 => {
            let vk = p.as_str(v[0]).map(str::to_string);
            let off = p.as_int(v[1]).filter(|&o| o >= 0);
            match (vk, off) {
                (Some(vk), Some(off)) => Some((vk, off as u64)),
                _ => return malformed(format!("storage {key} has a malformed view")),
            }
        }
        _ => None,
    };
    Ok(PersistentStorage {
        key,
        dtype,
        numel,
        view,
    })
}

/// The element type of `torch.<Name>Storage`.
fn storage_dtype(module: &str, name: &str) -> Option<Dtype> {
    if module != "torch" {
        return None;
    }
    Some(match name {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

/// Keys a state dict sits under, most common first.
const STATE_DICT_KEYS: &[&str] = &[
    "state_dict",
    "model",
    "module",
    "params",
    "model_state_dict",
];

/// Top-level keys of EMA weights kept beside the state dict.
const EMA_KEYS: &[&str] = &["state_dict_ema", "ema_state_dict", "model_ema", "ema"];

/// Deepest nesting followed when naming tensors of nested dicts.
const MAX_DEPTH: usize = 16;

type Locate<'a> = dyn Fn(&str, u64, Dtype) -> Result<StorageBytes, TorchError> + 'a;

fn build(p: &Pickle, locate: &Locate<'_>, container: Container) -> Result<TorchFile, TorchError> {
    // Find the state dict: the top level, or under one of the usual keys.
    let mut at = p.root;
    let mut path = String::new();
    for _ in 0..4 {
        if count_tensors(p, at) > 0 {
            break;
        }
        let next = STATE_DICT_KEYS.iter().find_map(|k| {
            let v = p.get(at, k)?;
            p.dict(v).is_some().then_some((k, v))
        });
        match next {
            Some((k, v)) => {
                path = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                at = v;
            }
            None => break,
        }
    }
    if p.dict(at).is_none() {
        return malformed(format!(
            "it holds {}, not a state dict of tensors",
            p.describe(p.root)
        ));
    }

    let mut named: Vec<(String, Id)> = Vec::new();
    collect(p, at, "", 0, &mut named);
    // Some trainers keep the EMA weights beside the state dict: read them as the EMA copy
    // LDM files carry inside it (`model_ema.` + the name).
    let mut ema_keys: Vec<&str> = Vec::new();
    if at != p.root {
        for key in EMA_KEYS {
            if let Some(v) = p.get(p.root, key)
                && count_tensors(p, v) > 0
            {
                collect(p, v, "model_ema", 0, &mut named);
                ema_keys.push(key);
            }
        }
    }

    let mut storages: Vec<Storage> = Vec::new();
    let mut storage_index: HashMap<String, usize> = HashMap::new();
    let mut tensors = Vec::with_capacity(named.len());
    let mut seen = std::collections::HashSet::new();
    for (name, id) in named {
        // A name is read once (the state dict's copy first).
        if !seen.insert(name.clone()) {
            continue;
        }
        let Node::Tensor(t) = p.node(id) else {
            continue;
        };
        let Node::PersId(pid) = p.node(t.storage) else {
            return malformed(format!("tensor '{name}' has no storage reference"));
        };
        let s = persistent_storage(p, *pid)
            .map_err(|e| TorchError::Layout(format!("tensor '{name}': {e}")))?;
        let (key, extra_offset) = match &s.view {
            // A legacy view names its bytes inside the root storage.
            Some((_, off)) => (s.key.clone(), *off),
            None => (s.key.clone(), 0),
        };
        let si = match storage_index.get(&key) {
            Some(&i) => i,
            None => {
                let bytes = locate(&key, s.numel, s.dtype)?;
                storages.push(Storage {
                    key: key.clone(),
                    dtype: s.dtype,
                    bytes,
                });
                storage_index.insert(key.clone(), storages.len() - 1);
                storages.len() - 1
            }
        };
        let to_usize = |v: &[u64]| {
            v.iter()
                .map(|&x| usize::try_from(x).ok())
                .collect::<Option<Vec<_>>>()
        };
        let (Some(shape), Some(stride), Ok(offset)) = (
            to_usize(&t.shape),
            to_usize(&t.stride),
            usize::try_from(t.offset + extra_offset),
        ) else {
            return malformed(format!("tensor '{name}' has a size that overflows"));
        };
        let tensor = Tensor {
            name: name.clone(),
            dtype: storages[si].dtype,
            shape,
            stride,
            offset,
            storage: si,
        };
        check_bounds(&tensor, &storages[si])?;
        tensors.push(tensor);
    }

    let mut metadata = Vec::new();
    let mut other = Vec::new();
    if let Some(top) = p.dict(p.root)
        && at != p.root
    {
        for &(k, v) in top {
            let Some(key) = p.as_str(k) else { continue };
            if (!path.is_empty() && path.split('.').next() == Some(key)) || ema_keys.contains(&key)
            {
                continue;
            }
            match p.node(v) {
                Node::Int(_) | Node::Float(_) | Node::Bool(_) | Node::Str(_) => {
                    metadata.push((key.to_string(), scalar_text(p, v)))
                }
                _ => other.push(OtherEntry {
                    key: key.to_string(),
                    what: p.describe(v),
                }),
            }
        }
    }
    Ok(TorchFile {
        container,
        tensors,
        storages,
        globals: p.globals.clone(),
        metadata,
        other,
        state_dict_at: path,
        big_endian: false,
    })
}

fn scalar_text(p: &Pickle, v: Id) -> String {
    match p.node(v) {
        Node::Str(s) => s.clone(),
        _ => p.describe(v),
    }
}

fn count_tensors(p: &Pickle, dict: Id) -> usize {
    p.dict(dict)
        .map(|d| {
            d.iter()
                .filter(|(_, v)| matches!(p.node(*v), Node::Tensor(_)))
                .count()
        })
        .unwrap_or(0)
}

/// Every tensor under `dict`, nested dicts joined with dots (as `state_dict()` names them).
fn collect(p: &Pickle, dict: Id, prefix: &str, depth: usize, out: &mut Vec<(String, Id)>) {
    let Some(entries) = p.dict(dict) else { return };
    for &(k, v) in entries {
        let key = match p.node(k) {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            _ => continue,
        };
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match p.node(v) {
            Node::Tensor(_) => out.push((name, v)),
            Node::Dict(_) if depth < MAX_DEPTH => collect(p, v, &name, depth + 1, out),
            _ => {}
        }
    }
}

/// Checks that every element the tensor's view can reach lies inside its storage.
fn check_bounds(t: &Tensor, s: &Storage) -> Result<(), TorchError> {
    let esize = super::dtype::bit_size(t.dtype) / 8;
    let numel: Option<usize> = t.shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
    let Some(numel) = numel else {
        return malformed(format!(
            "tensor '{}' has a shape whose size overflows",
            t.name
        ));
    };
    if numel == 0 {
        return Ok(());
    }
    // The last element a strided view reaches.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&n, &s)| {
            a.checked_add((n - 1).checked_mul(s)?)
        });
    let end = last
        .and_then(|l| l.checked_add(1))
        .and_then(|e| e.checked_mul(esize));
    match end {
        Some(end) if end <= s.bytes.byte_len() => Ok(()),
        _ => malformed(format!(
            "tensor '{}' reaches past the end of its storage {} ({} bytes): the file is \
             damaged or truncated",
            t.name,
            s.key,
            s.bytes.byte_len()
        )),
    }
}

/// The layout of a mapped torch checkpoint (`zip`: the zip container, else a bare pickle
/// stream). Tensors that cannot be viewed in place are copied once (see [`super::spill`]).
pub fn layout(map: memmap2::Mmap, zip: bool) -> Result<super::Layout, super::ReadError> {
    use super::layout::{Layout, PickleInfo, Provenance, Source, TensorEntry};
    use super::{dtype, spill};
    let t = read(&map, zip)?;
    let file_len = map.len();
    let mut spill = spill::Spill::new(file_len);
    let mut tensors = Vec::with_capacity(t.tensors.len());
    let mut copied = 0;
    // Compressed storages are decompressed once each, for the tensors that use them.
    let mut decompressed: HashMap<usize, Vec<u8>> = HashMap::new();
    for tensor in &t.tensors {
        let storage = &t.storages[tensor.storage];
        let esize = dtype::bit_size(tensor.dtype) / 8;
        let bytes = tensor.numel() * esize;
        let in_place = match &storage.bytes {
            StorageBytes::InPlace { begin, .. }
                if tensor.is_contiguous() && (!t.big_endian || esize == 1) =>
            {
                Some(begin + tensor.offset * esize)
            }
            _ => None,
        };
        let begin = match in_place {
            Some(b) => b,
            None => {
                copied += 1;
                let src: &[u8] = match &storage.bytes {
                    StorageBytes::InPlace { begin, len } => &map[*begin..begin + len],
                    StorageBytes::Compressed { member, len } => {
                        if let std::collections::hash_map::Entry::Vacant(e) =
                            decompressed.entry(tensor.storage)
                        {
                            e.insert(decompress(&map, member, *len)?);
                        }
                        &decompressed[&tensor.storage]
                    }
                };
                spill.gather(&spill::View {
                    bytes: src,
                    esize,
                    shape: &tensor.shape,
                    stride: &tensor.stride,
                    offset: tensor.offset,
                    swap: t.big_endian,
                })?
            }
        };
        tensors.push(TensorEntry {
            name: tensor.name.clone(),
            dtype: tensor.dtype,
            shape: tensor.shape.clone(),
            begin,
            end: begin + bytes,
            encoding: Default::default(),
        });
    }
    drop(decompressed);
    tensors.sort_by_key(|t| (t.begin, t.end));
    let metadata = t
        .metadata
        .iter()
        .map(|(k, v)| (format!("ckpt_diff.{k}"), v.clone()))
        .collect();
    let mut sources = vec![Source::new(map, 0, 0, file_len)];
    spill.finish_into(&mut sources)?;
    let stream = match &t.container {
        Container::Zip { pickle } => pickle.clone(),
        Container::Legacy => "the file".to_string(),
    };
    Ok(Layout {
        sources,
        file: Some(0),
        tensors,
        metadata,
        provenance: Provenance::Torch(PickleInfo {
            container: t.container,
            stream,
            globals: t.globals,
            other: t.other,
            state_dict_at: t.state_dict_at,
            big_endian: t.big_endian,
            copied,
        }),
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_contiguity() {
        let t = |shape: Vec<usize>, stride: Vec<usize>| Tensor {
            name: String::new(),
            dtype: Dtype::F32,
            shape,
            stride,
            offset: 0,
            storage: 0,
        };
        assert!(t(vec![2, 3], vec![3, 1]).is_contiguous());
        assert!(!t(vec![2, 3], vec![1, 2]).is_contiguous());
        assert!(t(vec![1, 3], vec![99, 1]).is_contiguous());
        assert!(t(vec![], vec![]).is_contiguous());
    }
}
