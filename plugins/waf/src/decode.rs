//! What a value looks like before the rules see it: URL-decoded (twice, for double
//! encoding), HTML entities resolved, NULs dropped, lowercased, runs of whitespace as
//! one space. Attackers encode to slip past matches; the rules match the decoded text.

use std::borrow::Cow;

/// The normalized form of `raw`; `plus_is_space` for form-encoded values.
pub fn normalize(raw: &[u8], plus_is_space: bool) -> String {
    let once = percent_decode(raw, plus_is_space);
    let twice = percent_decode(&once, false);
    let text = String::from_utf8_lossy(&twice);
    let text = html_decode(&text);
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c == '\0' {
            continue;
        }
        if c.is_whitespace() {
            if !space {
                out.push(' ');
            }
            space = true;
            continue;
        }
        space = false;
        out.extend(c.to_lowercase());
    }
    out
}

/// `%XX` decoded (invalid escapes kept as they are), `+` as a space when asked.
pub fn percent_decode(raw: &[u8], plus_is_space: bool) -> Cow<'_, [u8]> {
    if !raw
        .iter()
        .any(|b| *b == b'%' || (plus_is_space && *b == b'+'))
    {
        return Cow::Borrowed(raw);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' if i + 2 < raw.len() => match (hex(raw[i + 1]), hex(raw[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// HTML character references: `&#60;`, `&#x3c;` (with or without the `;`) and the
/// named ones attacks use.
pub fn html_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    const NAMED: [(&str, char); 12] = [
        ("lt", '<'),
        ("gt", '>'),
        ("quot", '"'),
        ("apos", '\''),
        ("amp", '&'),
        ("sol", '/'),
        ("bsol", '\\'),
        ("colon", ':'),
        ("lpar", '('),
        ("rpar", ')'),
        ("tab", '\t'),
        ("newline", '\n'),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (decoded, used) = reference(after, &NAMED);
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[used..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The character a reference after `&` stands for, and the bytes it took.
fn reference(after: &str, named: &[(&str, char)]) -> (Option<char>, usize) {
    let bytes = after.as_bytes();
    if bytes.first() == Some(&b'#') {
        let (radix, start) = match bytes.get(1) {
            Some(b'x' | b'X') => (16, 2),
            _ => (10, 1),
        };
        let digits = after[start..]
            .bytes()
            .take_while(|b| (*b as char).is_digit(radix))
            .take(8)
            .count();
        if digits == 0 {
            return (None, 0);
        }
        let value = u32::from_str_radix(&after[start..start + digits], radix).ok();
        let mut used = start + digits;
        if bytes.get(used) == Some(&b';') {
            used += 1;
        }
        return (value.and_then(char::from_u32), used);
    }
    for (name, c) in named {
        if after.len() >= name.len() && after[..name.len()].eq_ignore_ascii_case(name) {
            let mut used = name.len();
            if bytes.get(used) == Some(&b';') {
                used += 1;
            }
            return (Some(*c), used);
        }
    }
    (None, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_attackers_use_are_undone() {
        assert_eq!(normalize(b"%3Cscript%3E", false), "<script>");
        assert_eq!(normalize(b"%253Cscript%253E", false), "<script>", "double");
        assert_eq!(normalize(b"&lt;SCRIPT&gt;", false), "<script>");
        assert_eq!(normalize(b"&#60;script&#x3E;", false), "<script>");
        assert_eq!(normalize(b"&#x3cscript", false), "<script");
        assert_eq!(normalize(b"a+b", true), "a b");
        assert_eq!(normalize(b"a+b", false), "a+b");
        assert_eq!(normalize(b"uni%00on   sel\tect", false), "union sel ect");
        assert_eq!(normalize(b"100%", false), "100%");
        assert_eq!(normalize(b"%zz&unknown;&", false), "%zz&unknown;&");
        assert_eq!(normalize("ÄÖ".as_bytes(), false), "äö");
    }
}
