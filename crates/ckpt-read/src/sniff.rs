//! Recognises files that are not safetensors from their first bytes, so that the error
//! says what the file is instead of "bad header".

/// What the first bytes of a file say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A PyTorch checkpoint in the zip container (`torch.save` since 1.6): a pickle inside.
    TorchZip,
    /// A bare pickle stream (legacy `torch.save`, many `.ckpt` files).
    Pickle,
    /// A GGUF file (llama.cpp / ComfyUI-GGUF quantized models).
    Gguf,
    /// Anything else: parse it as safetensors and let the header checks speak.
    Other,
}

/// Looks at the first bytes of a file.
pub(crate) fn sniff(head: &[u8]) -> Sniffed {
    if head.starts_with(b"PK\x03\x04") {
        return Sniffed::TorchZip;
    }
    if head.starts_with(b"GGUF") {
        return Sniffed::Gguf;
    }
    // A pickle written with protocol 2..=5 starts with the PROTO opcode 0x80 and the
    // protocol number. A safetensors header length would need a first byte of 0x80 and
    // a second byte of 2..=5 *and* a sane size, so check the JSON brace too.
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        let looks_like_safetensors = head.len() > 8 && head[8] == b'{';
        if !looks_like_safetensors {
            return Sniffed::Pickle;
        }
    }
    Sniffed::Other
}

/// True when the extension says "pickle" whatever the bytes say.
pub(crate) fn has_pickle_extension(path: &std::path::Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("ckpt" | "pt" | "pth" | "bin" | "pkl")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_containers() {
        assert_eq!(sniff(b"PK\x03\x04rest"), Sniffed::TorchZip);
        assert_eq!(sniff(b"\x80\x02}q\x00(X"), Sniffed::Pickle);
        assert_eq!(sniff(b"GGUF\x03\x00"), Sniffed::Gguf);
        // A safetensors file whose header length starts with 0x80 0x02 is not a pickle.
        let mut st = vec![0x80u8, 0x02, 0, 0, 0, 0, 0, 0];
        st.push(b'{');
        assert_eq!(sniff(&st), Sniffed::Other);
        assert_eq!(sniff(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), Sniffed::Other);
    }
}
