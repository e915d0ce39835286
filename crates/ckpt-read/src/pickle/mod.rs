//! A pickle interpreter that executes nothing.
//!
//! `torch.save` writes a pickle, and loading a pickle with Python runs whatever callables it
//! names. This machine only builds data: every opcode of protocols 0 to 5 is understood, but
//! a `GLOBAL` is only recorded (module, name, byte offset and a [`Verdict`]), and calling it
//! (`REDUCE`, `NEWOBJ`, `OBJ`, `INST`, `BUILD`) builds an inert [`Node::Object`] unless the
//! callable is one of a fixed set of data constructors (`OrderedDict`, torch's tensor
//! rebuilders, numpy scalars, `_codecs.encode`, `set`). Nothing is ever imported or called,
//! so a malicious file is as harmless as a malformed one; [`Verdict::Dangerous`] globals are
//! reported so the user knows what the file *would* have done under `torch.load`.
//!
//! Values live in an arena and refer to each other by [`Id`], so a memo `GET` shares a value
//! instead of copying it (no exponential blow-up), and cycles cost nothing. Every structure a
//! crafted file could grow is bounded by [`Limits`].

pub(crate) mod globals;

use std::collections::HashMap;
use std::fmt;

pub use globals::Verdict;

/// Index of a value in [`Pickle::nodes`].
pub type Id = u32;

/// Bounds on what one pickle may build. Real SD checkpoints stay far below them (an SD1
/// `data.pkl` with EMA builds about 30 000 nodes, 16 per tensor); the bounds keep a crafted file from
/// exhausting memory: at most about `max_nodes x 48 bytes + max_items x 8 + max_bytes`
/// (under 1 GiB with the defaults).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Values built (every opcode that pushes builds at most one).
    pub max_nodes: usize,
    /// Items held by all lists, tuples, dicts and sets together.
    pub max_items: usize,
    /// Bytes of all strings and byte strings together.
    pub max_bytes: usize,
    /// Depth of the value stack and of the mark stack.
    pub max_stack: usize,
    /// Memo entries.
    pub max_memo: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: 8 << 20,
            max_items: 32 << 20,
            max_bytes: 256 << 20,
            max_stack: 1 << 20,
            max_memo: 4 << 20,
        }
    }
}

/// A torch tensor record (`_rebuild_tensor_v2(storage, offset, size, stride, ...)`), in
/// elements, not yet checked against its storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRecord {
    /// The persistent id naming the storage (a [`Node::PersId`]).
    pub storage: Id,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// One value. Containers hold [`Id`]s.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64 (little-endian two's complement bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// A global reference, as index into [`Pickle::globals`].
    Global(u32),
    /// What calling or instantiating an unrecognised global would have made: a record of
    /// the call, never executed.
    Object {
        class: Id,
        args: Vec<Id>,
        state: Option<Id>,
    },
    /// A persistent id (torch's storage references).
    PersId(Id),
    /// A `numpy.dtype(...)` with its type string ("i8", "f8", ...).
    NumpyDtype(String),
    Tensor(TensorRecord),
    /// An opcode that refers outside the stream (`EXT*`, out-of-band buffers).
    Unavailable(&'static str),
}

/// One global the pickle names, with where it is first named.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GlobalUse {
    pub module: String,
    pub name: String,
    /// Byte offset of the first opcode naming it, from the start of the stream.
    pub offset: u64,
    /// How many times the stream names it.
    pub count: u32,
    pub verdict: Verdict,
}

impl GlobalUse {
    pub fn dotted(&self) -> String {
        format!("{}.{}", self.module, self.name)
    }
}

/// A parsed pickle.
#[derive(Debug)]
pub struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
    /// Offset just past the `STOP` opcode (where a following pickle starts).
    pub end: usize,
    pub globals: Vec<GlobalUse>,
}

/// Why a pickle could not be read, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct PickleError {
    pub offset: u64,
    pub what: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.what)
    }
}

impl std::error::Error for PickleError {}

impl Pickle {
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id as usize]
    }

    /// The global a node names, if it is one.
    pub fn global(&self, id: Id) -> Option<&GlobalUse> {
        match self.node(id) {
            Node::Global(g) => Some(&self.globals[*g as usize]),
            _ => None,
        }
    }

    pub fn as_str(&self, id: Id) -> Option<&str> {
        match self.node(id) {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self, id: Id) -> Option<i64> {
        match self.node(id) {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The entries of a dict node.
    pub fn dict(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.node(id) {
            Node::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The value under string key `key` of a dict node.
    pub fn get(&self, dict: Id, key: &str) -> Option<Id> {
        self.dict(dict)?
            .iter()
            .find(|(k, _)| self.as_str(*k) == Some(key))
            .map(|(_, v)| *v)
    }

    /// The items of a tuple or list node.
    pub fn items(&self, id: Id) -> Option<&[Id]> {
        match self.node(id) {
            Node::Tuple(v) | Node::List(v) => Some(v),
            _ => None,
        }
    }

    /// A short description of a value for reports ("dict of 3", "ModelCheckpoint record").
    pub fn describe(&self, id: Id) -> String {
        match self.node(id) {
            Node::None => "None".into(),
            Node::Bool(b) => b.to_string(),
            Node::Int(i) => i.to_string(),
            Node::BigInt(_) => "a large integer".into(),
            Node::Float(x) => x.to_string(),
            Node::Str(s) if s.len() <= 60 => format!("{s:?}"),
            Node::Str(s) => format!("a string of {} bytes", s.len()),
            Node::Bytes(b) => format!("{} bytes", b.len()),
            Node::List(v) => format!("a list of {}", v.len()),
            Node::Tuple(v) => format!("a tuple of {}", v.len()),
            Node::Dict(v) => format!("a dict of {}", v.len()),
            Node::Set(v) => format!("a set of {}", v.len()),
            Node::Global(g) => self.globals[*g as usize].dotted(),
            Node::Object { class, .. } => match self.global(*class) {
                Some(g) => format!("a {} record", g.name),
                None => "an object record".into(),
            },
            Node::PersId(_) => "a storage reference".into(),
            Node::NumpyDtype(s) => format!("numpy dtype {s}"),
            Node::Tensor(t) => format!("a tensor {:?}", t.shape),
            Node::Unavailable(w) => format!("unavailable ({w})"),
        }
    }
}

/// Parses one pickle starting at `data[0]`; `base` is added to every offset in messages
/// (the stream's position in its file).
pub fn parse(data: &[u8], base: u64, limits: Limits) -> Result<Pickle, PickleError> {
    Machine::new(data, base, limits).run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
    limits: Limits,
    nodes: Vec<Node>,
    items: usize,
    bytes: usize,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    globals: Vec<GlobalUse>,
    global_index: HashMap<(String, String), u32>,
    /// Offset of the opcode being run, for messages.
    at: usize,
}

type Step<T> = Result<T, PickleError>;

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], base: u64, limits: Limits) -> Self {
        Machine {
            data,
            pos: 0,
            base,
            limits,
            nodes: Vec::new(),
            items: 0,
            bytes: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            globals: Vec::new(),
            global_index: HashMap::new(),
            at: 0,
        }
    }

    fn fail<T>(&self, what: impl Into<String>) -> Step<T> {
        Err(PickleError {
            offset: self.base + self.at as u64,
            what: what.into(),
        })
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return self.fail(format!(
                "the stream ends inside an opcode (it needs {n} more bytes, {} are left): the \
                 file is truncated",
                self.data.len() - self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Step<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Step<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// A newline-terminated argument of the text opcodes (without the newline).
    fn line(&mut self) -> Step<&'a [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                self.pos += n + 1;
                Ok(&rest[..n])
            }
            None => self.fail("a text argument has no end of line: the file is truncated"),
        }
    }

    fn line_str(&mut self) -> Step<&'a str> {
        let l = self.line()?;
        match std::str::from_utf8(l) {
            Ok(s) => Ok(s),
            Err(_) => self.fail("a text argument is not UTF-8"),
        }
    }

    fn sized(&mut self, n: u64) -> Step<&'a [u8]> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        self.take(n)
    }

    fn alloc(&mut self, node: Node) -> Step<Id> {
        if self.nodes.len() >= self.limits.max_nodes {
            return self.fail(format!(
                "the pickle builds more than {} values, the limit",
                self.limits.max_nodes
            ));
        }
        let cost = match &node {
            Node::Str(s) => s.len(),
            Node::Bytes(b) | Node::BigInt(b) => b.len(),
            _ => 0,
        };
        self.charge_bytes(cost)?;
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as Id)
    }

    fn charge_bytes(&mut self, n: usize) -> Step<()> {
        self.bytes += n;
        if self.bytes > self.limits.max_bytes {
            return self.fail(format!(
                "the pickle holds more than {} bytes of strings, the limit",
                self.limits.max_bytes
            ));
        }
        Ok(())
    }

    fn charge_items(&mut self, n: usize) -> Step<()> {
        self.items += n;
        if self.items > self.limits.max_items {
            return self.fail(format!(
                "the pickle's containers hold more than {} items, the limit",
                self.limits.max_items
            ));
        }
        Ok(())
    }

    fn push(&mut self, id: Id) -> Step<()> {
        if self.stack.len() >= self.limits.max_stack {
            return self.fail(format!(
                "the pickle's stack grows past {} values, the limit",
                self.limits.max_stack
            ));
        }
        self.stack.push(id);
        Ok(())
    }

    fn push_new(&mut self, node: Node) -> Step<()> {
        let id = self.alloc(node)?;
        self.push(id)
    }

    fn pop(&mut self) -> Step<Id> {
        // A value below the innermost mark belongs to an outer frame.
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return self.fail("an opcode pops from an empty stack");
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self) -> Step<Id> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return self.fail("an opcode reads an empty stack");
        }
        Ok(*self.stack.last().expect("checked"))
    }

    fn pop_mark(&mut self) -> Step<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return self.fail("an opcode needs a MARK and there is none");
        };
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u32) -> Step<()> {
        let v = self.top()?;
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&key) {
            return self.fail(format!(
                "the memo grows past {} entries, the limit",
                self.limits.max_memo
            ));
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Step<()> {
        match self.memo.get(&key) {
            Some(&v) => self.push(v),
            None => self.fail(format!("memo entry {key} is read before it is written")),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Step<Id> {
        let key = (module.to_string(), name.to_string());
        let g = match self.global_index.get(&key) {
            Some(&g) => {
                self.globals[g as usize].count += 1;
                g
            }
            None => {
                if self.globals.len() >= self.limits.max_memo {
                    return self.fail("the pickle names too many globals");
                }
                self.charge_bytes(module.len() + name.len())?;
                let g = self.globals.len() as u32;
                self.globals.push(GlobalUse {
                    module: module.to_string(),
                    name: name.to_string(),
                    offset: self.base + self.at as u64,
                    count: 1,
                    verdict: globals::verdict(module, name),
                });
                self.global_index.insert(key, g);
                g
            }
        };
        self.alloc(Node::Global(g))
    }

    fn run(mut self) -> Step<Pickle> {
        loop {
            self.at = self.pos;
            let op = self.u8()?;
            match op {
                b'.' => {
                    let root = self.pop()?;
                    return Ok(Pickle {
                        nodes: self.nodes,
                        root,
                        end: self.pos,
                        globals: self.globals,
                    });
                }
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.fail(format!("pickle protocol {proto} is not defined"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.u64()?;
                }
                b'(' => {
                    if self.marks.len() >= self.limits.max_stack {
                        return self.fail("too many nested MARKs");
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?;
                    self.push(v)?;
                }
                b'N' => self.push_new(Node::None)?,
                0x88 => self.push_new(Node::Bool(true))?,
                0x89 => self.push_new(Node::Bool(false))?,
                b'I' => {
                    let l = self.line_str()?;
                    let node = match l {
                        "01" => Node::Bool(true),
                        "00" => Node::Bool(false),
                        _ => match l.trim().parse::<i64>() {
                            Ok(i) => Node::Int(i),
                            Err(_) => {
                                return self.fail(format!("INT argument {l:?} is not a number"));
                            }
                        },
                    };
                    self.push_new(node)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4"));
                    self.push_new(Node::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push_new(Node::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push_new(Node::Int(v as i64))?;
                }
                b'L' => {
                    let l = self.line_str()?;
                    let digits = l.trim_end_matches('L');
                    let node = match digits.parse::<i64>() {
                        Ok(i) => Node::Int(i),
                        Err(_)
                            if !digits.is_empty()
                                && digits
                                    .trim_start_matches('-')
                                    .bytes()
                                    .all(|b| b.is_ascii_digit()) =>
                        {
                            Node::BigInt(digits.as_bytes().to_vec())
                        }
                        Err(_) => return self.fail(format!("LONG argument {l:?} is not a number")),
                    };
                    self.push_new(node)?;
                }
                0x8a => {
                    let n = self.u8()? as u64;
                    let b = self.sized(n)?;
                    let node = long_node(b);
                    self.push_new(node)?;
                }
                0x8b => {
                    let n = self.u32()?;
                    if n > i32::MAX as u32 {
                        return self.fail("LONG4 has a negative length");
                    }
                    let b = self.sized(n as u64)?;
                    let node = long_node(b);
                    self.push_new(node)?;
                }
                b'F' => {
                    let l = self.line_str()?;
                    match l.trim().parse::<f64>() {
                        Ok(x) => self.push_new(Node::Float(x))?,
                        Err(_) => {
                            return self.fail(format!("FLOAT argument {l:?} is not a number"));
                        }
                    }
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8"));
                    self.push_new(Node::Float(v))?;
                }
                b'S' => {
                    let l = self.line()?;
                    let s = match unquote(l) {
                        Some(s) => s,
                        None => return self.fail("STRING argument is not a quoted string"),
                    };
                    self.push_new(Node::Str(String::from_utf8_lossy(&s).into_owned()))?;
                }
                b'T' => {
                    let n = self.u32()?;
                    let b = self.sized(n as u64)?;
                    // Python 2 `str`: bytes; torch's readers decode them as text (ASCII).
                    self.push_new(Node::Str(String::from_utf8_lossy(b).into_owned()))?;
                }
                b'U' => {
                    let n = self.u8()?;
                    let b = self.sized(n as u64)?;
                    self.push_new(Node::Str(String::from_utf8_lossy(b).into_owned()))?;
                }
                b'V' => {
                    let l = self.line()?;
                    let s = raw_unicode_escape(l);
                    self.push_new(Node::Str(s))?;
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    self.text(n)?;
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    self.text(n)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    self.text(n)?;
                }
                b'B' => {
                    let n = self.u32()? as u64;
                    self.binary(n)?;
                }
                b'C' => {
                    let n = self.u8()? as u64;
                    self.binary(n)?;
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    self.binary(n)?;
                }
                0x97 => self.push_new(Node::Unavailable("out-of-band buffer"))?,
                0x98 => {}
                b')' => self.push_new(Node::Tuple(Vec::new()))?,
                b']' => self.push_new(Node::List(Vec::new()))?,
                b'}' => self.push_new(Node::Dict(Vec::new()))?,
                0x8f => self.push_new(Node::Set(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.charge_items(items.len())?;
                    self.push_new(Node::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.charge_items(n)?;
                    self.push_new(Node::Tuple(items))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.charge_items(items.len())?;
                    self.push_new(Node::List(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.fail("DICT has an odd number of items");
                    }
                    self.charge_items(items.len())?;
                    let pairs = items.chunks(2).map(|p| (p[0], p[1])).collect();
                    self.push_new(Node::Dict(pairs))?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.charge_items(items.len())?;
                    self.push_new(Node::Set(items))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.top()?;
                    self.extend(target, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.extend(target, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?;
                    self.set_items(target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.fail("SETITEMS has an odd number of items");
                    }
                    let target = self.top()?;
                    self.set_items(target, items)?;
                }
                b'p' => {
                    let l = self.line_str()?;
                    match l.trim().parse::<u32>() {
                        Ok(k) => self.memo_put(k)?,
                        Err(_) => return self.fail(format!("PUT argument {l:?} is not a number")),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.line_str()?;
                    match l.trim().parse::<u32>() {
                        Ok(k) => self.memo_get(k)?,
                        Err(_) => return self.fail(format!("GET argument {l:?} is not a number")),
                    }
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let g = self.global(module, name)?;
                    self.push(g)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Str(m), Node::Str(n)) = (
                        self.nodes[module as usize].clone(),
                        self.nodes[name as usize].clone(),
                    ) else {
                        return self.fail("STACK_GLOBAL needs two strings");
                    };
                    let g = self.global(&m, &n)?;
                    self.push(g)?;
                }
                b'i' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let class = self.global(module, name)?;
                    let args = self.pop_mark()?;
                    self.charge_items(args.len())?;
                    let v = self.call(class, args)?;
                    self.push(v)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.fail("OBJ needs a class");
                    }
                    let class = items.remove(0);
                    self.charge_items(items.len())?;
                    let v = self.call(class, items)?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self.args_of(args)?;
                    let v = self.call(callable, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let args = self.args_of(args)?;
                    let v = self.call(class, args)?;
                    self.push(v)?;
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let mut args = self.args_of(args)?;
                    args.push(kwargs);
                    let v = self.call(class, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    // Python would call __setstate__ or update __dict__: only records do.
                    if let Node::Object { state: s, .. } = &mut self.nodes[target as usize] {
                        *s = Some(state);
                    }
                }
                b'P' => {
                    let l = self.line()?;
                    let s = self.alloc(Node::Str(String::from_utf8_lossy(l).into_owned()))?;
                    self.push_new(Node::PersId(s))?;
                }
                b'Q' => {
                    let v = self.pop()?;
                    self.push_new(Node::PersId(v))?;
                }
                0x82 => {
                    self.u8()?;
                    self.push_new(Node::Unavailable("extension registry"))?;
                }
                0x83 => {
                    self.u16()?;
                    self.push_new(Node::Unavailable("extension registry"))?;
                }
                0x84 => {
                    self.u32()?;
                    self.push_new(Node::Unavailable("extension registry"))?;
                }
                other => {
                    return self.fail(format!(
                        "opcode 0x{other:02x} is not a pickle opcode: the file is damaged or \
                         not a pickle"
                    ));
                }
            }
        }
    }

    fn text(&mut self, n: u64) -> Step<()> {
        let b = self.sized(n)?;
        let s = String::from_utf8_lossy(b).into_owned();
        self.push_new(Node::Str(s))
    }

    fn binary(&mut self, n: u64) -> Step<()> {
        let b = self.sized(n)?.to_vec();
        self.push_new(Node::Bytes(b))
    }

    /// The arguments of a call: a tuple's items (anything else is one argument).
    fn args_of(&self, args: Id) -> Step<Vec<Id>> {
        Ok(match &self.nodes[args as usize] {
            Node::Tuple(v) => v.clone(),
            _ => vec![args],
        })
    }

    fn extend(&mut self, target: Id, items: Vec<Id>) -> Step<()> {
        self.charge_items(items.len())?;
        match &mut self.nodes[target as usize] {
            Node::List(v) | Node::Set(v) => v.extend(items),
            Node::Object { args, .. } => args.extend(items),
            _ => return self.fail("APPEND to a value that is not a list"),
        }
        Ok(())
    }

    fn set_items(&mut self, target: Id, items: Vec<Id>) -> Step<()> {
        self.charge_items(items.len())?;
        match &mut self.nodes[target as usize] {
            Node::Dict(d) => d.extend(items.chunks(2).map(|p| (p[0], p[1]))),
            // `obj[k] = v` would run the object's code: keep the pairs on the record.
            Node::Object { args, .. } => args.extend(items),
            _ => return self.fail("SETITEM on a value that is not a dict"),
        }
        Ok(())
    }

    /// What calling `callable(*args)` builds: data for the recognised constructors, an inert
    /// record for anything else. Nothing is executed.
    fn call(&mut self, callable: Id, args: Vec<Id>) -> Step<Id> {
        let known = match &self.nodes[callable as usize] {
            Node::Global(g) => {
                let g = &self.globals[*g as usize];
                globals::constructor(&g.module, &g.name)
            }
            _ => None,
        };
        use globals::Constructor as K;
        let node = match known {
            Some(K::OrderedDict) => {
                let mut pairs = Vec::new();
                if let Some(&first) = args.first()
                    && let Node::List(items) | Node::Tuple(items) = &self.nodes[first as usize]
                {
                    for &item in items {
                        if let Node::Tuple(kv) | Node::List(kv) = &self.nodes[item as usize]
                            && kv.len() == 2
                        {
                            pairs.push((kv[0], kv[1]));
                        }
                    }
                }
                self.charge_items(pairs.len() * 2)?;
                Node::Dict(pairs)
            }
            Some(K::Set) => {
                let items = match args.first().map(|&a| &self.nodes[a as usize]) {
                    Some(Node::List(v) | Node::Tuple(v) | Node::Set(v)) => v.clone(),
                    _ => Vec::new(),
                };
                self.charge_items(items.len())?;
                Node::Set(items)
            }
            Some(K::RebuildTensor) => self.tensor(&args)?,
            Some(K::RebuildParameter) => match args.first() {
                Some(&data) => return Ok(data),
                None => return self.fail("_rebuild_parameter without its tensor"),
            },
            Some(K::RebuildFromType) => {
                // (func, new_type, args, state): the tensor is func(*args).
                if args.len() < 3 {
                    return self.fail("_rebuild_from_type_v2 needs (func, type, args, state)");
                }
                let inner = self.args_of(args[2])?;
                return self.call(args[0], inner);
            }
            Some(K::CodecsEncode) => {
                let s = args.first().map(|&a| &self.nodes[a as usize]);
                match s {
                    Some(Node::Str(s)) => {
                        // Protocol 2 writes bytes as encode(latin1 text, 'latin1').
                        let b: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
                        Node::Bytes(b)
                    }
                    _ => Node::Bytes(Vec::new()),
                }
            }
            Some(K::NumpyDtype) => match args.first().map(|&a| &self.nodes[a as usize]) {
                Some(Node::Str(s)) => Node::NumpyDtype(s.clone()),
                _ => Node::NumpyDtype(String::new()),
            },
            Some(K::NumpyScalar) => numpy_scalar(&self.nodes, &args),
            None => Node::Object {
                class: callable,
                args,
                state: None,
            },
        };
        self.alloc(node)
    }

    fn tensor(&mut self, args: &[Id]) -> Step<Node> {
        if args.len() < 4 {
            return self.fail("_rebuild_tensor needs (storage, offset, size, stride)");
        }
        let int = |id: Id| match &self.nodes[id as usize] {
            Node::Int(i) if *i >= 0 => Some(*i as u64),
            _ => None,
        };
        let ints = |id: Id| match &self.nodes[id as usize] {
            Node::Tuple(v) | Node::List(v) => v.iter().map(|&i| int(i)).collect::<Option<Vec<_>>>(),
            _ => None,
        };
        let (Some(offset), Some(shape), Some(stride)) =
            (int(args[1]), ints(args[2]), ints(args[3]))
        else {
            return self.fail("a tensor record has a malformed offset, size or stride");
        };
        if shape.len() != stride.len() {
            return self.fail(format!(
                "a tensor record has {} sizes but {} strides",
                shape.len(),
                stride.len()
            ));
        }
        Ok(Node::Tensor(TensorRecord {
            storage: args[0],
            offset,
            shape,
            stride,
        }))
    }
}

/// LONG1/LONG4: little-endian two's complement.
fn long_node(b: &[u8]) -> Node {
    if b.is_empty() {
        return Node::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
        buf[..b.len()].copy_from_slice(b);
        return Node::Int(i64::from_le_bytes(buf));
    }
    Node::BigInt(b.to_vec())
}

/// `numpy.core.multiarray.scalar(dtype, bytes)`: the number, for the dtypes a `global_step`
/// or `epoch` uses; an inert value otherwise.
fn numpy_scalar(nodes: &[Node], args: &[Id]) -> Node {
    let (Some(&d), Some(&b)) = (args.first(), args.get(1)) else {
        return Node::Unavailable("numpy scalar without data");
    };
    let (Node::NumpyDtype(code), Node::Bytes(bytes)) = (&nodes[d as usize], &nodes[b as usize])
    else {
        return Node::Unavailable("numpy scalar of an unknown dtype");
    };
    let code = code.trim_start_matches(['<', '=', '|']);
    let le = |n: usize| -> Option<[u8; 8]> {
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(bytes.get(..n)?);
        Some(buf)
    };
    match code {
        "i8" | "int64" => le(8).map(|b| Node::Int(i64::from_le_bytes(b))),
        "u8" | "uint64" => le(8).map(|b| Node::Int(u64::from_le_bytes(b) as i64)),
        "i4" | "int32" => {
            le(4).map(|b| Node::Int(i32::from_le_bytes(b[..4].try_into().unwrap()) as i64))
        }
        "f8" | "float64" => le(8).map(|b| Node::Float(f64::from_le_bytes(b))),
        "f4" | "float32" => {
            le(4).map(|b| Node::Float(f32::from_le_bytes(b[..4].try_into().unwrap()) as f64))
        }
        _ => None,
    }
    .unwrap_or(Node::Unavailable("numpy scalar of an unknown dtype"))
}

/// The body of a protocol-0 `STRING` argument: `'...'` or `"..."` with Python escapes.
fn unquote(l: &[u8]) -> Option<Vec<u8>> {
    if l.len() < 2 {
        return None;
    }
    let q = l[0];
    if (q != b'\'' && q != b'"') || l[l.len() - 1] != q {
        return None;
    }
    let body = &l[1..l.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' || i + 1 == body.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = body[i + 1];
        i += 2;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'x' if i + 2 <= body.len() => {
                let hex = std::str::from_utf8(&body[i..i + 2]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

/// Protocol-0 `UNICODE`: raw-unicode-escape (`\uXXXX`, `\UXXXXXXXX`, else latin-1 bytes).
fn raw_unicode_escape(l: &[u8]) -> String {
    let mut out = String::with_capacity(l.len());
    let mut i = 0;
    while i < l.len() {
        if l[i] == b'\\' && i + 1 < l.len() && (l[i + 1] == b'u' || l[i + 1] == b'U') {
            let n = if l[i + 1] == b'u' { 4 } else { 8 };
            if let Some(hex) = l.get(i + 2..i + 2 + n)
                && let Ok(h) = std::str::from_utf8(hex)
                && let Ok(cp) = u32::from_str_radix(h, 16)
                && let Some(c) = char::from_u32(cp)
            {
                out.push(c);
                i += 2 + n;
                continue;
            }
        }
        out.push(l[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests;
