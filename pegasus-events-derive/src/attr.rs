//! The attribute model: what `#[event(...)]` says about the struct and about each field.
//!
//! Reading is forgiving: a wrong key or value is recorded in the [`Ctxt`] and reading goes
//! on, so one compile reports every mistake. Rules that relate several attributes or fields
//! are in `check.rs`.

use proc_macro2::Span;
use quote::{quote, ToTokens};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Fields, Generics, Ident, Lit, LitStr, Path, Token, Type};

use crate::ctxt::Ctxt;
use crate::serde_attr::{SerdeContainer, SerdeField};
use crate::symbol::{
    Symbol, ENCRYPTED, EVENT, FIELD_KEYS, FREE_FORM_TOPIC, KEY, NAME, SENSITIVE, STRUCT_KEYS,
    SUBJECT, TOPIC, UPCAST_FROM, VERSION,
};

/// The message for every input that is not a struct with named fields.
const NAMED_STRUCTS_ONLY: &str =
    "#[derive(Event)] supports structs with named fields; model each event type as its own struct";

/// A struct deriving `Event`, with its attributes read and checked.
pub(crate) struct Event<'a> {
    /// The struct's name.
    pub(crate) ident: &'a Ident,
    /// The struct's generics (rejected by `check.rs`, but kept for the impl header).
    pub(crate) generics: &'a Generics,
    /// What the struct-level attributes say.
    pub(crate) container: Container,
    /// The named fields, in declaration order.
    pub(crate) fields: Vec<Field<'a>>,
}

/// The struct-level attributes.
pub(crate) struct Container {
    /// `topic = "..."`; `None` if it is missing or not a string, which is already reported.
    pub(crate) topic: Option<LitStr>,
    /// `name = "..."`, or the struct's identifier.
    pub(crate) name: String,
    /// `version = N`, or 1.
    pub(crate) version: u32,
    /// `upcast_from = Path`.
    pub(crate) upcast_from: Option<Path>,
    /// Whether `free_form_topic` is set.
    pub(crate) free_form_topic: bool,
    /// What `#[serde(...)]` on the struct says about field names.
    pub(crate) serde: SerdeContainer,
}

/// One named field and its attributes.
pub(crate) struct Field<'a> {
    /// The field's name.
    pub(crate) ident: &'a Ident,
    /// The field's type.
    pub(crate) ty: &'a Type,
    /// The span of `key` if the field is marked `#[event(key)]`.
    pub(crate) key: Option<Span>,
    /// The span of `sensitive` if the field is marked `#[event(sensitive)]`.
    pub(crate) sensitive: Option<Span>,
    /// The span of `encrypted` if the field is marked `#[event(encrypted)]`.
    pub(crate) encrypted: Option<Span>,
    /// `subject = field`: the field whose value names the subject key.
    pub(crate) subject: Option<Ident>,
    /// What `#[serde(...)]` on the field says about its name.
    pub(crate) serde: SerdeField,
}

impl Field<'_> {
    /// Whether the redacted view hides the field: sensitive or encrypted.
    pub(crate) fn hidden(&self) -> bool {
        self.sensitive.is_some() || self.encrypted.is_some()
    }

    /// The field's name in the JSON object, as serde names it.
    pub(crate) fn json_name(&self, container: &SerdeContainer) -> String {
        if let Some(rename) = &self.serde.rename {
            return rename.clone();
        }
        let name = unraw(self.ident);
        container
            .rename_all
            .as_ref()
            .and_then(|rule| crate::serde_attr::apply_rename_all(&rule.value(), &name))
            .unwrap_or(name)
    }
}

/// Reads the named fields of a struct; any other input is reported and gives no fields.
pub(crate) fn fields_from_ast<'a>(cx: &Ctxt, input: &'a DeriveInput) -> Vec<Field<'a>> {
    let ident = &input.ident;
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => fields
                .named
                .iter()
                .filter_map(|field| Field::from_ast(cx, field))
                .collect(),
            Fields::Unnamed(fields) => {
                cx.error_spanned_by(
                    fields,
                    format_args!(
                        "#[derive(Event)] supports structs with named fields, which name the \
                         keys of the JSON payload; write `struct {ident} {{ name: Type, .. }}`"
                    ),
                );
                Vec::new()
            }
            Fields::Unit => {
                cx.error_spanned_by(
                    ident,
                    format_args!(
                        "#[derive(Event)] supports structs with named fields; for an event \
                         without data, write `struct {ident} {{}}`"
                    ),
                );
                Vec::new()
            }
        },
        Data::Enum(data) => {
            let enum_token = data.enum_token;
            cx.error_spanned_by(quote!(#enum_token #ident), NAMED_STRUCTS_ONLY);
            Vec::new()
        }
        Data::Union(data) => {
            let union_token = data.union_token;
            cx.error_spanned_by(quote!(#union_token #ident), NAMED_STRUCTS_ONLY);
            Vec::new()
        }
    }
}

impl Container {
    /// Reads every `#[event(...)]` on the struct.
    pub(crate) fn from_ast(cx: &Ctxt, input: &DeriveInput) -> Self {
        let mut topic = Attr::new(TOPIC);
        let mut name = Attr::new(NAME);
        let mut version = Attr::new(VERSION);
        let mut upcast_from = Attr::new(UPCAST_FROM);
        let mut free_form_topic = Attr::new(FREE_FORM_TOPIC);
        // A `topic` with a bad value is reported as such, not also as missing.
        let mut topic_given = false;

        for attr in input.attrs.iter().filter(|attr| *attr.path() == EVENT) {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path == TOPIC {
                    topic_given = true;
                    if let Some(value) = string_value(cx, &meta, TOPIC, TOPIC_EXAMPLE)? {
                        topic.set(cx, &meta.path, value);
                    }
                } else if meta.path == NAME {
                    if let Some(value) = string_value(cx, &meta, NAME, NAME_EXAMPLE)? {
                        if value.value().is_empty() {
                            cx.error_spanned_by(
                                &value,
                                "`name` must not be empty: it is the event type name written \
                                 to `ce_type`; leave it out to use the struct's name",
                            );
                        } else {
                            name.set(cx, &meta.path, value.value());
                        }
                    }
                } else if meta.path == VERSION {
                    if let Some(value) = version_value(cx, &meta)? {
                        version.set(cx, &meta.path, value);
                    }
                } else if meta.path == UPCAST_FROM {
                    if let Some(value) = path_value(cx, &meta)? {
                        upcast_from.set(cx, &meta.path, value);
                    }
                } else if meta.path == FREE_FORM_TOPIC {
                    flag(cx, &meta, FREE_FORM_TOPIC)?;
                    free_form_topic.set(cx, &meta.path, ());
                } else if let Some(field_key) = FIELD_KEYS.into_iter().find(|k| meta.path == *k) {
                    cx.error_spanned_by(
                        &meta.path,
                        format_args!(
                            "`{field_key}` belongs on a field, not on the struct: write \
                             #[event({field_key})] above the field{}",
                            match field_key.as_str() {
                                "key" => " that holds the partition key",
                                "sensitive" => " to hide from logs",
                                "encrypted" => " to encrypt on the wire",
                                _ => " that is encrypted under a per-subject key",
                            }
                        ),
                    );
                    skip_value(&meta)?;
                } else {
                    unknown_key(cx, &meta, "struct", &STRUCT_KEYS);
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(error) = parsed {
                cx.syn_error(error);
            }
        }

        let topic = topic.get();
        if !topic_given {
            cx.error_spanned_by(
                &input.ident,
                format_args!(
                    "missing `topic`: add #[event(topic = \"<service>.<entity>.<action>\")] to \
                     `{}`, e.g. #[event(topic = \"shipping.shipment.created\")]",
                    input.ident
                ),
            );
        }
        Container {
            topic,
            name: name.get().unwrap_or_else(|| unraw(&input.ident)),
            version: version.get().unwrap_or(1),
            upcast_from: upcast_from.get(),
            free_form_topic: free_form_topic.get().is_some(),
            serde: SerdeContainer::from_attrs(&input.attrs),
        }
    }
}

impl<'a> Field<'a> {
    /// Reads one named field; `None` if it has no name (which a named struct never has).
    fn from_ast(cx: &Ctxt, field: &'a syn::Field) -> Option<Self> {
        let mut key = Attr::new(KEY);
        let mut sensitive = Attr::new(SENSITIVE);
        let mut encrypted = Attr::new(ENCRYPTED);
        let mut subject = Attr::new(SUBJECT);

        for attr in field.attrs.iter().filter(|attr| *attr.path() == EVENT) {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path == KEY {
                    flag(cx, &meta, KEY)?;
                    key.set(cx, &meta.path, meta.path.span());
                } else if meta.path == SENSITIVE {
                    flag(cx, &meta, SENSITIVE)?;
                    sensitive.set(cx, &meta.path, meta.path.span());
                } else if meta.path == ENCRYPTED {
                    flag(cx, &meta, ENCRYPTED)?;
                    encrypted.set(cx, &meta.path, meta.path.span());
                } else if meta.path == SUBJECT {
                    if let Some(value) = ident_value(cx, &meta)? {
                        subject.set(cx, &meta.path, value);
                    }
                } else if let Some(struct_key) = STRUCT_KEYS.into_iter().find(|k| meta.path == *k) {
                    cx.error_spanned_by(
                        &meta.path,
                        format_args!(
                            "`{struct_key}` belongs on the struct, not on a field: put it in \
                             the #[event(...)] attribute above the struct"
                        ),
                    );
                    skip_value(&meta)?;
                } else {
                    unknown_key(cx, &meta, "field", &FIELD_KEYS);
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(error) = parsed {
                cx.syn_error(error);
            }
        }

        Some(Field {
            ident: field.ident.as_ref()?,
            ty: &field.ty,
            key: key.get(),
            sensitive: sensitive.get(),
            encrypted: encrypted.get(),
            subject: subject.get(),
            serde: SerdeField::from_attrs(&field.attrs),
        })
    }
}

const TOPIC_EXAMPLE: &str = "topic = \"shipping.shipment.created\"";
const NAME_EXAMPLE: &str = "name = \"ShipmentCreatedEvent\"";

/// One attribute value, remembering whether it was already given.
struct Attr<T> {
    symbol: Symbol,
    value: Option<T>,
}

impl<T> Attr<T> {
    fn new(symbol: Symbol) -> Self {
        Attr {
            symbol,
            value: None,
        }
    }

    /// Sets the value; a second one is an error at its key, and the first one is kept.
    fn set(&mut self, cx: &Ctxt, key: &Path, value: T) {
        if self.value.is_some() {
            cx.error_spanned_by(
                key,
                format_args!(
                    "duplicate #[event] attribute `{}`: it may be given only once",
                    self.symbol
                ),
            );
        } else {
            self.value = Some(value);
        }
    }

    fn get(self) -> Option<T> {
        self.value
    }
}

/// Reads `key = "string"`. A value of the wrong kind is recorded and gives `None`; only a
/// token stream `syn` cannot read at all is an `Err`, which ends this attribute.
fn string_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    key: Symbol,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    let Some(expr) = expr_value(cx, meta, key, example)? else {
        return Ok(None);
    };
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(Some(lit)),
        other => {
            cx.error_spanned_by(
                other,
                format_args!("`{key}` must be a string literal, e.g. {example}"),
            );
            Ok(None)
        }
    }
}

/// Reads `version = N`: an integer literal from 1 to `u32::MAX`.
fn version_value(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<u32>> {
    const EXAMPLE: &str = "version = 2";
    let Some(expr) = expr_value(cx, meta, VERSION, EXAMPLE)? else {
        return Ok(None);
    };
    let Expr::Lit(syn::ExprLit {
        lit: Lit::Int(lit), ..
    }) = &expr
    else {
        cx.error_spanned_by(
            &expr,
            format_args!("`version` must be an integer literal, e.g. {EXAMPLE}"),
        );
        return Ok(None);
    };
    match lit.base10_parse::<u32>() {
        Ok(0) => {
            cx.error_spanned_by(
                lit,
                "`version` must be at least 1: the first version of an event is 1, and each \
                 new version adds one",
            );
            Ok(None)
        }
        Ok(version) => Ok(Some(version)),
        Err(_) => {
            cx.error_spanned_by(
                lit,
                format_args!("`version` must fit in a u32 (at most {})", u32::MAX),
            );
            Ok(None)
        }
    }
}

/// Reads `upcast_from = Path`.
fn path_value(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Path>> {
    unquoted_value(
        cx,
        meta,
        UPCAST_FROM,
        "upcast_from = ShipmentCreatedV1",
        "the path of the previous version's type",
    )
}

/// Reads `subject = field_name`.
fn ident_value(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Ident>> {
    unquoted_value(
        cx,
        meta,
        SUBJECT,
        "subject = user_id",
        "the name of the field whose value names the subject",
    )
}

/// Reads `key = value` where the value is Rust syntax (`T`: a path, a field name), not a
/// string: a quoted value is refused, saying the key `takes` what, as in `example`.
fn unquoted_value<T: syn::parse::Parse>(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    key: Symbol,
    example: &str,
    takes: &str,
) -> syn::Result<Option<T>> {
    if !meta.input.peek(Token![=]) {
        missing_value(cx, meta, key, example);
        skip_value(meta)?;
        return Ok(None);
    }
    let value = meta.value()?;
    if value.peek(Lit) {
        let lit: Lit = value.parse()?;
        cx.error_spanned_by(
            lit,
            format_args!("`{key}` takes {takes}, without quotes, e.g. {example}"),
        );
        return Ok(None);
    }
    value.parse().map(Some)
}

/// Reads the expression after `key =`, or records that it is missing.
fn expr_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    key: Symbol,
    example: &str,
) -> syn::Result<Option<Expr>> {
    if meta.input.peek(Token![=]) {
        let mut expr: Expr = meta.value()?.parse()?;
        // A value passed through a `macro_rules!` fragment (`$topic:literal`, `$v:expr`)
        // arrives wrapped in an invisible group; the literal inside is what was written.
        while let Expr::Group(group) = expr {
            expr = *group.expr;
        }
        Ok(Some(expr))
    } else {
        missing_value(cx, meta, key, example);
        skip_value(meta)?;
        Ok(None)
    }
}

fn missing_value(cx: &Ctxt, meta: &ParseNestedMeta<'_>, key: Symbol, example: &str) {
    cx.error_spanned_by(
        &meta.path,
        format_args!("`{key}` needs a value, e.g. {example}"),
    );
}

/// Accepts a bare keyword; a value after it is recorded as an error and skipped.
fn flag(cx: &Ctxt, meta: &ParseNestedMeta<'_>, key: Symbol) -> syn::Result<()> {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        cx.error_spanned_by(
            &meta.path,
            format_args!("`{key}` is a flag and takes no value: write #[event({key})]"),
        );
        skip_value(meta)?;
    }
    Ok(())
}

/// Consumes whatever follows a key (`= expr` or `(...)`), so that the next key is read.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let _content;
        syn::parenthesized!(_content in meta.input);
    }
    Ok(())
}

/// Records an unknown key, suggesting the closest accepted one if there is a near miss.
fn unknown_key(cx: &Ctxt, meta: &ParseNestedMeta<'_>, place: &str, expected: &[Symbol]) {
    let found = meta.path.to_token_stream().to_string().replace(' ', "");
    let suggestion = expected
        .iter()
        .map(|symbol| (edit_distance(&found, symbol.as_str()), symbol))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, symbol)| format!("; did you mean `{symbol}`?"))
        .unwrap_or_default();
    let expected = expected
        .iter()
        .map(|symbol| format!("`{symbol}`"))
        .collect::<Vec<_>>()
        .join(", ");
    cx.error_spanned_by(
        &meta.path,
        format_args!(
            "unknown #[event] {place} attribute `{found}`; expected one of {expected}{suggestion}"
        ),
    );
}

/// Levenshtein distance, for "did you mean" on short keywords.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// An identifier as written, without the `r#` of a raw identifier.
pub(crate) fn unraw(ident: &Ident) -> String {
    use syn::ext::IdentExt;
    ident.unraw().to_string()
}
