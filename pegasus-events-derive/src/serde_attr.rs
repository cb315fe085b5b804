//! What `#[serde(...)]` says about the JSON name of a field, read only as far as
//! `#[event(encrypted)]` needs it: the name a field has in the JSON object, and the serde
//! attributes that would move or hide it.
//!
//! Reading never reports an error: serde's own derive reports malformed `serde`
//! attributes; what this cannot read is treated as absent.

use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, Lit, LitStr, Token};

/// The struct-level `#[serde(...)]` facts.
#[derive(Default)]
pub(crate) struct SerdeContainer {
    /// `rename_all = "..."` (or the same rule for both directions).
    pub(crate) rename_all: Option<LitStr>,
    /// `rename_all(serialize = "a", deserialize = "b")` with different rules.
    pub(crate) rename_all_differs: Option<LitStr>,
    /// `transparent`, `into`, `from` or `try_from`: the struct is not written as its fields.
    pub(crate) not_an_object: Option<&'static str>,
}

/// The field-level `#[serde(...)]` facts.
#[derive(Default)]
pub(crate) struct SerdeField {
    /// `rename = "..."` (or the same name for both directions).
    pub(crate) rename: Option<String>,
    /// The first attribute that moves or hides the field in the JSON object, by name.
    pub(crate) moves_or_hides: Option<&'static str>,
}

const HIDING: [&str; 7] = [
    "flatten",
    "skip",
    "skip_serializing",
    "skip_deserializing",
    "skip_serializing_if",
    "alias",
    "getter",
];

fn serde_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|attr| attr.path().is_ident("serde"))
}

/// Reads `= "string"` or `(serialize = "a", deserialize = "b")` after a key.
fn names(meta: &ParseNestedMeta<'_>) -> syn::Result<(Option<LitStr>, Option<LitStr>)> {
    if meta.input.peek(Token![=]) {
        let expr: Expr = meta.value()?.parse()?;
        let lit = match expr {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Str(lit), ..
            }) => Some(lit),
            _ => None,
        };
        return Ok((lit.clone(), lit));
    }
    let (mut serialize, mut deserialize) = (None, None);
    if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| {
            let value: Expr = inner.value()?.parse()?;
            let lit = match value {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(lit), ..
                }) => Some(lit),
                _ => None,
            };
            if inner.path.is_ident("serialize") {
                serialize = lit;
            } else if inner.path.is_ident("deserialize") {
                deserialize = lit;
            }
            Ok(())
        })?;
    }
    Ok((serialize, deserialize))
}

/// Consumes whatever follows a key that is not read.
fn skip(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let _content;
        syn::parenthesized!(_content in meta.input);
    }
    Ok(())
}

impl SerdeContainer {
    pub(crate) fn from_attrs(attrs: &[Attribute]) -> Self {
        let mut out = SerdeContainer::default();
        for attr in serde_attrs(attrs) {
            let _ = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename_all") {
                    match names(&meta)? {
                        (Some(s), Some(d)) if s.value() == d.value() => out.rename_all = Some(s),
                        (Some(s), None) => out.rename_all = Some(s),
                        (Some(s), Some(_)) | (None, Some(s)) => out.rename_all_differs = Some(s),
                        (None, None) => {}
                    }
                } else {
                    for word in ["transparent", "into", "from", "try_from"] {
                        if meta.path.is_ident(word) {
                            out.not_an_object = Some(word);
                        }
                    }
                    skip(&meta)?;
                }
                Ok(())
            });
        }
        out
    }
}

impl SerdeField {
    pub(crate) fn from_attrs(attrs: &[Attribute]) -> Self {
        let mut out = SerdeField::default();
        for attr in serde_attrs(attrs) {
            let _ = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    match names(&meta)? {
                        (Some(s), Some(d)) if s.value() == d.value() => {
                            out.rename = Some(s.value());
                        }
                        (None, None) => {}
                        _ => {
                            out.moves_or_hides
                                .get_or_insert("rename(serialize, deserialize)");
                        }
                    }
                } else {
                    if let Some(word) = HIDING.iter().copied().find(|w| meta.path.is_ident(w)) {
                        out.moves_or_hides.get_or_insert(word);
                    }
                    skip(&meta)?;
                }
                Ok(())
            });
        }
        out
    }
}

/// serde's `rename_all` rule applied to a field name, or `None` for a rule serde does not
/// know (serde reports that itself).
pub(crate) fn apply_rename_all(rule: &str, field: &str) -> Option<String> {
    let pascal = || {
        let mut out = String::with_capacity(field.len());
        let mut upper = true;
        for c in field.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                out.push(c.to_ascii_uppercase());
                upper = false;
            } else {
                out.push(c);
            }
        }
        out
    };
    Some(match rule {
        "lowercase" | "snake_case" => field.to_owned(),
        "UPPERCASE" | "SCREAMING_SNAKE_CASE" => field.to_ascii_uppercase(),
        "PascalCase" => pascal(),
        "camelCase" => {
            let pascal = pascal();
            let mut chars = pascal.chars();
            match chars.next() {
                Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        }
        "kebab-case" => field.replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => field.to_ascii_uppercase().replace('_', "-"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::apply_rename_all;

    #[test]
    fn rename_all_rules_give_serdes_field_names() {
        let cases = [
            ("camelCase", "date_of_birth", "dateOfBirth"),
            ("PascalCase", "date_of_birth", "DateOfBirth"),
            ("kebab-case", "date_of_birth", "date-of-birth"),
            ("SCREAMING_SNAKE_CASE", "email", "EMAIL"),
            ("SCREAMING-KEBAB-CASE", "a_b", "A-B"),
            ("lowercase", "a_b", "a_b"),
            ("camelCase", "email", "email"),
        ];
        for (rule, field, expected) in cases {
            assert_eq!(
                apply_rename_all(rule, field).as_deref(),
                Some(expected),
                "{rule}"
            );
        }
        assert_eq!(apply_rename_all("Title Case", "a"), None);
    }
}
