//! Rules that relate several attributes or fields, and the rules on the topic string.

use syn::{Generics, Ident, LitStr};

use crate::attr::{Container, Field};
use crate::ctxt::Ctxt;

/// The longest topic name Kafka accepts.
const KAFKA_TOPIC_MAX_LEN: usize = 249;

/// Checks what the struct-level attributes and the struct's header say; problems go to `cx`.
pub(crate) fn check_container(
    cx: &Ctxt,
    ident: &Ident,
    generics: &Generics,
    container: &Container,
) {
    if let Some(topic) = &container.topic {
        if container.free_form_topic {
            check_kafka_topic(cx, topic);
        } else {
            check_topic_convention(cx, topic);
        }
    }
    check_upcast_source(cx, ident, container);
    check_generics(cx, ident, generics);
}

/// Checks the fields against each other; problems go to `cx`.
pub(crate) fn check_fields(cx: &Ctxt, container: &Container, fields: &[Field<'_>]) {
    check_key_fields(cx, fields);
    check_encrypted_fields(cx, container, fields);
}

/// `encrypted` keeps the field at one JSON name and off the key; `subject` names another,
/// unencrypted field and sits on an `Option`.
fn check_encrypted_fields(cx: &Ctxt, container: &Container, fields: &[Field<'_>]) {
    let mut reported_container = false;
    for field in fields {
        if let (Some(subject), None) = (&field.subject, field.encrypted) {
            cx.error_spanned_by(
                subject,
                format_args!(
                    "`subject` says which key encrypts the field, so it comes with `encrypted`: \
                     write #[event(encrypted, subject = {subject})] on `{}`",
                    field.ident
                ),
            );
        }
        let Some(encrypted) = field.encrypted else {
            continue;
        };
        if let Some(word) = field.serde.moves_or_hides {
            cx.error_at(
                encrypted,
                format_args!(
                    "the encrypted field `{}` must keep one name in the JSON object, but \
                     #[serde({word})] moves or hides it; remove one of the two",
                    field.ident
                ),
            );
        }
        if !reported_container {
            let problem = container
                .serde
                .not_an_object
                .map(|word| format!("#[serde({word})] on the struct writes it as something other than its fields"))
                .or_else(|| {
                    container.serde.rename_all_differs.as_ref().map(|_| {
                        "#[serde(rename_all(serialize = .., deserialize = ..))] gives the field \
                         two names"
                            .to_owned()
                    })
                });
            if let Some(problem) = problem {
                reported_container = true;
                cx.error_at(
                    encrypted,
                    format_args!(
                        "`{}` cannot be encrypted: {problem}; encrypted fields are found by \
                         their one JSON name",
                        field.ident
                    ),
                );
            }
        }
        let Some(subject) = &field.subject else {
            continue;
        };
        match fields.iter().find(|other| other.ident == subject) {
            None => cx.error_spanned_by(
                subject,
                format_args!(
                    "`subject = {subject}` names no field of this struct: name the field whose \
                     value (a string or a number, e.g. the user id) names the subject"
                ),
            ),
            Some(other) if other.ident == field.ident || other.encrypted.is_some() => cx
                .error_spanned_by(
                    subject,
                    format_args!(
                        "`subject = {subject}` names an encrypted field; the subject must be \
                         readable to find its key, so name a field that is not encrypted"
                    ),
                ),
            Some(_) => {}
        }
        if !is_option(field.ty) {
            cx.error_spanned_by(
                field.ty,
                format_args!(
                    "the field `{}` is encrypted under a per-subject key, so it is erased \
                     (decoded as `None`) once the subject is forgotten: its type must be \
                     `Option<..>`",
                    field.ident
                ),
            );
        }
    }
}

/// Whether `ty` is written as `Option<..>` (also `std::option::Option<..>`).
fn is_option(ty: &syn::Type) -> bool {
    let syn::Type::Path(path) = ty else {
        return false;
    };
    path.qself.is_none()
        && path.path.segments.last().is_some_and(|last| {
            last.ident == "Option"
                && matches!(last.arguments, syn::PathArguments::AngleBracketed(_))
        })
}

fn check_generics(cx: &Ctxt, ident: &Ident, generics: &Generics) {
    if !generics.params.is_empty() {
        cx.error_spanned_by(
            generics,
            format_args!(
                "#[derive(Event)] does not support generic parameters or lifetimes: an event \
                 is one owned, concrete type bound to one topic and one schema; give each \
                 variation its own struct, e.g. `struct {ident} {{ .. }}` with concrete field \
                 types"
            ),
        );
    }
}

/// `<service>.<entity>.<action>`: three non-empty parts of `[a-z0-9-]`, none starting or
/// ending with a hyphen.
fn check_topic_convention(cx: &Ctxt, topic: &LitStr) {
    let value = topic.value();
    let Some(problem) = convention_problem(&value) else {
        return;
    };
    let shown = shorten(&value);
    cx.error_spanned_by(
        topic,
        format_args!(
            "topic `{shown}` does not follow the `<service>.<entity>.<action>` convention: \
             {problem}\n\
             = note: a topic is three parts separated by dots, each made of lowercase ASCII \
             letters, digits and hyphens, not starting or ending with a hyphen, e.g. \
             `shipping.shipment.status-changed`\n\
             = help: a topic that cannot follow the convention (one shared with other systems, \
             say) can opt out with `free_form_topic`: #[event(topic = \"{shown}\", \
             free_form_topic)]"
        ),
    );
}

fn convention_problem(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("it is empty".to_owned());
    }
    let parts: Vec<&str> = topic.split('.').collect();
    if parts.len() != 3 {
        return Some(format!("it has {} parts, not 3", parts.len()));
    }
    for (part, role) in parts.iter().zip(["service", "entity", "action"]) {
        if part.is_empty() {
            return Some(format!("the {role} part is empty"));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            let what = if c.is_ascii_uppercase() {
                "the uppercase letter "
            } else {
                ""
            };
            return Some(format!(
                "the {role} part `{part}` contains {what}{}",
                describe_char(c)
            ));
        }
        if part.starts_with('-') || part.ends_with('-') {
            return Some(format!(
                "the {role} part `{part}` starts or ends with a hyphen"
            ));
        }
    }
    None
}

/// What Kafka itself accepts: 1 to 249 characters of `[a-zA-Z0-9._-]`, other than `.` and
/// `..`.
fn check_kafka_topic(cx: &Ctxt, topic: &LitStr) {
    let value = topic.value();
    let problem = if value.is_empty() {
        Some("it is empty".to_owned())
    } else if value == "." || value == ".." {
        Some(format!("`{value}` is reserved"))
    } else if value.chars().count() > KAFKA_TOPIC_MAX_LEN {
        Some(format!(
            "it is {} characters long, more than {KAFKA_TOPIC_MAX_LEN}",
            value.chars().count()
        ))
    } else {
        value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("it contains {}", describe_char(c)))
    };
    if let Some(problem) = problem {
        let shown = shorten(&value);
        cx.error_spanned_by(
            topic,
            format_args!(
                "topic `{shown}` is not a legal Kafka topic name: {problem}\n\
                 = note: Kafka topic names are 1 to {KAFKA_TOPIC_MAX_LEN} characters of ASCII \
                 letters, digits, `.`, `_` and `-`, and are neither `.` nor `..`"
            ),
        );
    }
}

/// `upcast_from` naming the struct itself would make decoding recurse forever (and the
/// compiler report a cycle instead of the mistake).
fn check_upcast_source(cx: &Ctxt, ident: &Ident, container: &Container) {
    let Some(path) = &container.upcast_from else {
        return;
    };
    if path.is_ident("Self") || path.is_ident(ident) {
        cx.error_spanned_by(
            path,
            format_args!(
                "`{}` cannot upcast from itself: `upcast_from` names the previous version of \
                 the event, a separate struct with a lower `version`",
                ident
            ),
        );
    }
}

/// At most one key field, and the key is never sensitive.
fn check_key_fields(cx: &Ctxt, fields: &[Field<'_>]) {
    let mut first_key: Option<&Field<'_>> = None;
    for field in fields {
        let Some(key) = field.key else {
            continue;
        };
        match first_key {
            None => first_key = Some(field),
            Some(first) => cx.error_at(
                key,
                format_args!(
                    "only one field can be the partition key, and `{}` already is; remove \
                     #[event(key)] here, or combine the values into one field",
                    first.ident
                ),
            ),
        }
        if let Some(encrypted) = field.encrypted {
            cx.error_at(
                encrypted,
                format_args!(
                    "the key field `{}` cannot be encrypted: the key is written in clear to \
                     the record key and the `ce_partitionkey` header, where brokers need it to \
                     pick the partition; partition by a field that is not secret (e.g. an id)",
                    field.ident
                ),
            );
        }
        if let Some(sensitive) = field.sensitive {
            cx.error_at(
                sensitive,
                format_args!(
                    "the key field `{}` cannot be sensitive: the key is written in clear to \
                     the record key and the `ce_partitionkey` header; partition by a field \
                     that is not secret",
                    field.ident
                ),
            );
        }
    }
}

/// A character as a message shows it: `X` for a visible one, named or escaped otherwise.
fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_alphanumeric() || c.is_ascii_punctuation() => format!("`{c}`"),
        c => format!("{}", c.escape_unicode()),
    }
}

/// A topic as a message shows it: long ones are cut, since the span shows the whole literal.
fn shorten(topic: &str) -> String {
    const SHOWN: usize = 60;
    if topic.chars().count() <= SHOWN {
        topic.to_owned()
    } else {
        let head: String = topic.chars().take(SHOWN).collect();
        format!("{head}…")
    }
}
