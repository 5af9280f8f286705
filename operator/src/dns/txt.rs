//! TXT record data: DNS character-strings hold at most 255 bytes each (RFC 1035 §3.3), so
//! longer text (an RSA DKIM key) is published as several strings that receivers concatenate.

/// Longest DNS character-string, in bytes.
pub const MAX_TXT_STRING: usize = 255;

/// Splits `text` into pieces of at most [`MAX_TXT_STRING`] bytes, never inside a UTF-8
/// character. Empty text is one empty string.
pub fn txt_strings(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > MAX_TXT_STRING {
        let mut cut = MAX_TXT_STRING;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        out.push(piece);
        rest = tail;
    }
    out.push(rest);
    out
}

/// `text` as zone-file TXT data: quoted strings of at most 255 bytes, separated by spaces, with
/// `"` and `\` escaped.
pub fn quote_txt(text: &str) -> String {
    txt_strings(text)
        .into_iter()
        .map(|piece| {
            let escaped = piece.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\"")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text of zone-file TXT data written by [`quote_txt`]: the strings unescaped and joined.
pub fn unquote_txt(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') => quoted = true,
            (true, '"') => quoted = false,
            (true, '\\') => out.extend(chars.next()),
            (true, c) => out.push(c),
            (false, _) => {}
        }
    }
    out
}
