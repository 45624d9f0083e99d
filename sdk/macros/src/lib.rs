//! `#[sluice_sdk::config]`: derive `Deserialize` for a plugin config through the serde
//! that `sluice-sdk` re-exports, so plugin crates need no serde dependency of their own.

use proc_macro::{Delimiter, Group, Punct, Spacing, TokenStream, TokenTree};

const PREFIX: &str =
    "#[derive(::sluice_sdk::serde::Deserialize)] #[serde(crate = \"sluice_sdk::serde\")]";

/// Derives `Deserialize` (via `sluice_sdk::serde`) for a struct or enum.
///
/// Other `#[derive(..)]` and `#[serde(..)]` attributes may follow, in any order. A
/// `Deserialize` already listed in a `#[derive(..)]` is dropped there, so the derive
/// always comes first and `#[serde(..)]` helpers are never used before it.
#[proc_macro_attribute]
pub fn config(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return "::core::compile_error!(\"#[config] takes no arguments\");"
            .parse()
            .unwrap_or_default();
    }
    let mut out: TokenStream = PREFIX.parse().unwrap_or_default();
    let mut tokens = item.into_iter().peekable();

    // Leading outer attributes: `#` followed by a bracketed group.
    while let Some(TokenTree::Punct(p)) = tokens.peek() {
        if p.as_char() != '#' {
            break;
        }
        let hash = tokens.next();
        match tokens.next() {
            Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Bracket => {
                if let Some(attr) = without_deserialize(&g) {
                    out.extend(hash);
                    out.extend([attr]);
                }
            }
            other => {
                out.extend(hash);
                out.extend(other);
                break;
            }
        }
    }
    out.extend(tokens);
    out
}

/// The attribute unchanged, or for `derive(..)` the same list without any path ending in
/// `Deserialize`; `None` when nothing is left of the derive.
fn without_deserialize(attr: &Group) -> Option<TokenTree> {
    let mut it = attr.stream().into_iter();
    let is_derive = matches!(it.next(), Some(TokenTree::Ident(id)) if id.to_string() == "derive");
    let list = match (is_derive, it.next(), it.next()) {
        (true, Some(TokenTree::Group(list)), None)
            if list.delimiter() == Delimiter::Parenthesis =>
        {
            list
        }
        _ => return Some(TokenTree::Group(attr.clone())),
    };

    // Split the derive list at top-level commas and keep the other paths.
    let mut kept: Vec<Vec<TokenTree>> = Vec::new();
    let mut current = Vec::new();
    for t in list.stream() {
        match &t {
            TokenTree::Punct(p) if p.as_char() == ',' => kept.push(std::mem::take(&mut current)),
            _ => current.push(t),
        }
    }
    kept.push(current);
    kept.retain(|path| {
        !path.is_empty()
            && !matches!(path.last(), Some(TokenTree::Ident(id)) if id.to_string() == "Deserialize")
    });
    if kept.is_empty() {
        return None;
    }

    let mut inner = TokenStream::new();
    for (i, path) in kept.into_iter().enumerate() {
        if i > 0 {
            inner.extend([TokenTree::Punct(Punct::new(',', Spacing::Alone))]);
        }
        inner.extend(path);
    }
    let mut derive: TokenStream = "derive".parse().unwrap_or_default();
    derive.extend([TokenTree::Group(Group::new(Delimiter::Parenthesis, inner))]);
    let mut group = Group::new(Delimiter::Bracket, derive);
    group.set_span(attr.span());
    Some(TokenTree::Group(group))
}
