//! `#[sluice_sdk::config]`: derive `Deserialize` for a plugin config through the serde
//! that `sluice-sdk` re-exports, so plugin crates need no serde dependency of their own.
//! `#[sluice_sdk::plugin]`: on `impl Plugin for ..`, declare the hooks the block defines.

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

/// On an `impl Plugin for T { .. }` block: writes `const HOOKS` from the hook methods the
/// block defines (`on_request`, `on_response`, `on_request_body`, `on_response_body`), and `type Context = ();` when the block
/// has no `type Context`. The host calls only the hooks listed, so a hook can never be
/// written but forgotten in the declaration.
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return "::core::compile_error!(\"#[plugin] takes no arguments\");"
            .parse()
            .unwrap_or_default();
    }
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let is_impl = matches!(tokens.first(), Some(TokenTree::Ident(id)) if id.to_string() == "impl");
    let body_at = tokens
        .iter()
        .rposition(|t| matches!(t, TokenTree::Group(g) if g.delimiter() == Delimiter::Brace));
    let (true, Some(body_at)) = (is_impl, body_at) else {
        return "::core::compile_error!(\"#[plugin] goes on an `impl Plugin for ..` block\");"
            .parse()
            .unwrap_or_default();
    };
    let TokenTree::Group(body) = &tokens[body_at] else {
        return TokenStream::new();
    };

    // Top-level items only: a nested `fn on_request` inside a method body does not count.
    let (mut on_request, mut on_response, mut has_context, mut has_hooks) =
        (false, false, false, false);
    let (mut on_request_body, mut on_response_body) = (false, false);
    let items: Vec<TokenTree> = body.stream().into_iter().collect();
    for pair in items.windows(2) {
        if let (TokenTree::Ident(kind), TokenTree::Ident(name)) = (&pair[0], &pair[1]) {
            match (kind.to_string().as_str(), name.to_string().as_str()) {
                ("fn", "on_request") => on_request = true,
                ("fn", "on_response") => on_response = true,
                ("fn", "on_request_body") => on_request_body = true,
                ("fn", "on_response_body") => on_response_body = true,
                ("type", "Context") => has_context = true,
                ("const", "HOOKS") => has_hooks = true,
                _ => {}
            }
        }
    }

    let mut extra = String::new();
    if !has_hooks {
        extra.push_str(&format!(
            "const HOOKS: ::sluice_sdk::Hooks = ::sluice_sdk::Hooks {{ on_request: {on_request}, on_response: {on_response}, on_request_body: {on_request_body}, on_response_body: {on_response_body} }};"
        ));
    }
    if !has_context {
        extra.push_str("type Context = ();");
    }
    let mut stream = body.stream();
    stream.extend(extra.parse::<TokenStream>().unwrap_or_default());
    let mut group = Group::new(Delimiter::Brace, stream);
    group.set_span(body.span());
    tokens[body_at] = TokenTree::Group(group);
    tokens.into_iter().collect()
}
