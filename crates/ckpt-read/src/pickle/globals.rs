//! What a global named by a pickle is: the verdicts a scanner gives, and the few globals the
//! interpreter turns into data.
//!
//! The lists follow A1111's `modules/safe.py` allow-list (data constructors) and picklescan's
//! `_unsafe_globals` (dangerous), with the modules that reach the OS, the interpreter or the
//! network. A global that is in neither list is *inert*: it is recorded and never called,
//! which is harmless here, but `torch.load` would import and run it.

/// A scanner's verdict on one global.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Builds plain data (`collections.OrderedDict`, numpy scalars, `_codecs.encode`).
    Data,
    /// Torch's tensor and storage rebuilders.
    Tensor,
    /// Neither known data nor known danger: never called here; `torch.load` would import it.
    InertUnknown,
    /// Reaches the OS, the interpreter, files or the network under `torch.load`.
    Dangerous,
}

impl Verdict {
    pub fn id(self) -> &'static str {
        match self {
            Verdict::Data => "data",
            Verdict::Tensor => "tensor rebuild",
            Verdict::InertUnknown => "inert-unknown",
            Verdict::Dangerous => "dangerous",
        }
    }
}

/// The globals the interpreter gives a meaning to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Constructor {
    OrderedDict,
    Set,
    RebuildTensor,
    RebuildParameter,
    RebuildFromType,
    CodecsEncode,
    NumpyDtype,
    NumpyScalar,
}

/// The data constructor `module.name` is, if any.
pub(crate) fn constructor(module: &str, name: &str) -> Option<Constructor> {
    use Constructor as C;
    Some(match (module, name) {
        ("collections", "OrderedDict") => C::OrderedDict,
        ("builtins" | "__builtin__", "set" | "frozenset") => C::Set,
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => C::RebuildTensor,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            C::RebuildParameter
        }
        ("torch._tensor", "_rebuild_from_type_v2") => C::RebuildFromType,
        ("_codecs", "encode") => C::CodecsEncode,
        ("numpy", "dtype") => C::NumpyDtype,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => C::NumpyScalar,
        _ => return None,
    })
}

/// Modules every global of which is dangerous.
const DANGEROUS_MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "subprocess",
    "commands",
    "runpy",
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "marshal",
    "shutil",
    "sys",
    "socket",
    "webbrowser",
    "httplib",
    "http",
    "urllib",
    "requests",
    "aiohttp",
    "ctypes",
    "importlib",
    "code",
    "pty",
    "platform",
    "asyncio",
    "multiprocessing",
    "signal",
    "bdb",
    "pdb",
    "timeit",
    "venv",
    "ensurepip",
    "pip",
    "tempfile",
    "torch.hub",
];

/// Single dangerous globals in otherwise ordinary modules.
const DANGEROUS_GLOBALS: &[(&str, &str)] = &[
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "compile"),
    ("builtins", "getattr"),
    ("builtins", "setattr"),
    ("builtins", "delattr"),
    ("builtins", "open"),
    ("builtins", "__import__"),
    ("builtins", "globals"),
    ("builtins", "locals"),
    ("builtins", "breakpoint"),
    ("builtins", "input"),
    ("builtins", "help"),
    ("builtins", "vars"),
    ("functools", "partial"),
    ("functools", "reduce"),
    ("operator", "attrgetter"),
    ("operator", "itemgetter"),
    ("operator", "methodcaller"),
    ("torch", "load"),
    ("torch.serialization", "load"),
    ("torch.serialization", "_load"),
    ("torch.storage", "_load_from_bytes"),
    ("numpy", "load"),
    ("numpy.testing._private.utils", "runstring"),
    ("_io", "FileIO"),
    ("io", "FileIO"),
    ("io", "open"),
];

/// The verdict on global `module.name`.
pub(crate) fn verdict(module: &str, name: &str) -> Verdict {
    let module_norm = match module {
        "__builtin__" | "__builtins__" => "builtins",
        m => m,
    };
    if DANGEROUS_GLOBALS.contains(&(module_norm, name))
        || DANGEROUS_MODULES
            .iter()
            .any(|m| module_norm == *m || module_norm.starts_with(&format!("{m}.")))
    {
        return Verdict::Dangerous;
    }
    if let Some(c) = constructor(module, name) {
        return match c {
            Constructor::RebuildTensor
            | Constructor::RebuildParameter
            | Constructor::RebuildFromType => Verdict::Tensor,
            _ => Verdict::Data,
        };
    }
    match (module, name) {
        ("torch", n) if n.ends_with("Storage") => Verdict::Tensor,
        ("torch", "Size" | "device" | "float32" | "float16" | "bfloat16") => Verdict::Data,
        ("torch._utils", "_rebuild_device_tensor_from_numpy") => Verdict::Tensor,
        ("torch.nn.modules.container", "ParameterDict") => Verdict::Data,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Verdict::Data,
        ("numpy", "ndarray") => Verdict::Data,
        // Lightning's callback state: a record of numbers and paths.
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint") => Verdict::Data,
        _ => Verdict::InertUnknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_verdicts() {
        assert_eq!(verdict("posix", "system"), Verdict::Dangerous);
        assert_eq!(verdict("os", "system"), Verdict::Dangerous);
        assert_eq!(verdict("os.path", "join"), Verdict::Dangerous);
        assert_eq!(verdict("__builtin__", "eval"), Verdict::Dangerous);
        assert_eq!(verdict("builtins", "exec"), Verdict::Dangerous);
        assert_eq!(
            verdict("torch.storage", "_load_from_bytes"),
            Verdict::Dangerous
        );
        assert_eq!(
            verdict("torch._utils", "_rebuild_tensor_v2"),
            Verdict::Tensor
        );
        assert_eq!(verdict("torch", "HalfStorage"), Verdict::Tensor);
        assert_eq!(verdict("collections", "OrderedDict"), Verdict::Data);
        // "ossify" is not "os".
        assert_eq!(verdict("ossify", "x"), Verdict::InertUnknown);
        assert_eq!(verdict("mymodel", "Net"), Verdict::InertUnknown);
    }
}
