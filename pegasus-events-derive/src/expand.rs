//! Code generation: the `Event` impl for a checked struct.
//!
//! Everything is generated inside `const _: () = { ... };` and named by absolute path, so
//! it cannot clash with, or be changed by, names in the user's module.

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Path};

use crate::attr::{self, unraw, Container, Event, Field};
use crate::check;
use crate::ctxt::Ctxt;
use crate::symbol::{Symbol, NAME, TOPIC};

/// Reads, checks and expands `#[derive(Event)]`; `Err` holds every problem found.
pub(crate) fn derive_event(input: &DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    // Read and check in source order (struct attributes, header, fields), which is the
    // order the errors are shown in.
    let container = Container::from_ast(&cx, input);
    check::check_container(&cx, &input.ident, &input.generics, &container);
    let fields = attr::fields_from_ast(&cx, input);
    check::check_fields(&cx, &container, &fields);
    cx.check()?;
    impl_event(&Event {
        ident: &input.ident,
        generics: &input.generics,
        container,
        fields,
    })
}

/// What the derive expands to when the input has errors: the errors, plus, where the input
/// allows it, a placeholder impl so that every use of the type as an `Event` does not add a
/// second error that hides the first.
pub(crate) fn fallback(input: &DeriveInput, errors: syn::Error) -> TokenStream {
    let errors = errors.into_compile_error();
    if !input.generics.params.is_empty() || matches!(input.data, Data::Union(_)) {
        return errors;
    }
    let ident = &input.ident;
    let name = unraw(ident);
    let unreachable = quote! {
        ::core::unreachable!("#[derive(Event)] failed; the compile errors say why")
    };
    let placeholder = wrap_in_const(quote! {
        #[automatically_derived]
        impl ::pegasus_events::Event for #ident {
            const TOPIC: &'static str = "";
            const NAME: &'static str = #name;
            const VERSION: u32 = 1;
            const KEYED: bool = false;

            fn write_partition_key(&self, _: &mut ::std::string::String) -> bool {
                #unreachable
            }

            fn fmt_redacted(&self, _: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                #unreachable
            }
        }
    });
    quote!(#errors #placeholder)
}

fn impl_event(event: &Event<'_>) -> syn::Result<TokenStream> {
    let Some(topic) = &event.container.topic else {
        // `attr` reports a missing topic, so `cx.check()` has returned before this point.
        return Err(syn::Error::new_spanned(event.ident, "missing `topic`"));
    };
    let ident = event.ident;
    let (impl_generics, ty_generics, where_clause) = event.generics.split_for_impl();
    let topic = topic.value();
    let name = &event.container.name;
    let version = Literal::u32_unsuffixed(event.container.version);
    let key = event.fields.iter().find(|field| field.key.is_some());
    let keyed = key.is_some();

    let write_partition_key = write_partition_key(key);
    let fmt_redacted = fmt_redacted(event);
    let visit_sensitive = visit_sensitive(event);
    let encrypted_fields = encrypted_fields(event);
    let upcast = event
        .container
        .upcast_from
        .as_ref()
        .map(|older| upcast(event, older));
    let (oldest_version, decode_version, upcast_checks) = match upcast {
        Some(Upcast {
            oldest_version,
            decode_version,
            checks,
        }) => (Some(oldest_version), Some(decode_version), Some(checks)),
        None => (None, None, None),
    };

    Ok(wrap_in_const(quote! {
        #upcast_checks

        #[automatically_derived]
        impl #impl_generics ::pegasus_events::Event for #ident #ty_generics #where_clause {
            const TOPIC: &'static str = #topic;
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;
            #oldest_version
            const KEYED: bool = #keyed;
            #encrypted_fields

            #write_partition_key

            #fmt_redacted

            #visit_sensitive

            #decode_version
        }
    }))
}

/// `write_partition_key`: the key field through `Display`, or `false` without a key field.
fn write_partition_key(key: Option<&Field<'_>>) -> TokenStream {
    let Some(key) = key else {
        return quote! {
            fn write_partition_key(&self, _: &mut ::std::string::String) -> bool {
                false
            }
        };
    };
    // Spanned at the field's type, so a key type without `Display` is reported there, with
    // this function's name in the note.
    let member = respanned(key.ident, key.ty);
    let write = quote_spanned! {key.ty.span()=>
        partition_key_must_implement_display(&self.#member, out)
    };
    quote! {
        fn write_partition_key(&self, out: &mut ::std::string::String) -> bool {
            fn partition_key_must_implement_display<K>(key: &K, out: &mut ::std::string::String)
            where
                K: ?::core::marker::Sized + ::core::fmt::Display,
            {
                // Writing to a `String` does not fail; a failing `Display` impl leaves what
                // it wrote, and the event is still keyed.
                let _ = ::core::fmt::Write::write_fmt(out, ::core::format_args!("{}", key));
            }
            #write;
            true
        }
    }
}

/// `ENCRYPTED_FIELDS` with each encrypted field's JSON name and subject; with
/// `upcast_from`, also `HAS_ENCRYPTED_FIELDS` and `encrypted_fields`, which hand older
/// versions to the older type. Nothing (the trait's defaults) without either.
fn encrypted_fields(event: &Event<'_>) -> TokenStream {
    let serde = &event.container.serde;
    let entries: Vec<TokenStream> = event
        .fields
        .iter()
        .filter(|field| field.encrypted.is_some())
        .map(|field| {
            let name = field.json_name(serde);
            let subject = match field
                .subject
                .as_ref()
                .and_then(|subject| event.fields.iter().find(|other| other.ident == subject))
            {
                Some(subject) => {
                    let subject = subject.json_name(serde);
                    quote!(::core::option::Option::Some(#subject))
                }
                None => quote!(::core::option::Option::None),
            };
            quote! {
                ::pegasus_events::__private::EncryptedField { name: #name, subject: #subject }
            }
        })
        .collect();
    let own = (!entries.is_empty()).then(|| {
        quote! {
            const ENCRYPTED_FIELDS: &'static [::pegasus_events::__private::EncryptedField] =
                &[#(#entries),*];
        }
    });
    let Some(older) = &event.container.upcast_from else {
        return own.unwrap_or_default();
    };
    quote! {
        #own
        const HAS_ENCRYPTED_FIELDS: bool =
            !<Self as ::pegasus_events::Event>::ENCRYPTED_FIELDS.is_empty()
                || <#older as ::pegasus_events::Event>::HAS_ENCRYPTED_FIELDS;

        fn encrypted_fields(
            version: u32,
        ) -> &'static [::pegasus_events::__private::EncryptedField] {
            if version == <Self as ::pegasus_events::Event>::VERSION {
                <Self as ::pegasus_events::Event>::ENCRYPTED_FIELDS
            } else {
                <#older as ::pegasus_events::Event>::encrypted_fields(version)
            }
        }
    }
}

/// `visit_sensitive`: each sensitive field's value through serde, for scrubbing error text;
/// nothing (the trait's default) when no field is sensitive.
fn visit_sensitive(event: &Event<'_>) -> TokenStream {
    let visits: Vec<TokenStream> = event
        .fields
        .iter()
        .filter(|field| field.hidden())
        .map(|field| {
            // Spanned at the field's type, so a sensitive field that serde cannot write is
            // reported there.
            let member = respanned(field.ident, field.ty);
            quote_spanned! {field.ty.span()=>
                ::pegasus_events::__private::visit_sensitive_value(&self.#member, visit);
            }
        })
        .collect();
    if visits.is_empty() {
        return TokenStream::new();
    }
    quote! {
        fn visit_sensitive(&self, visit: &mut dyn ::core::ops::FnMut(&str)) {
            #(#visits)*
        }
    }
}

/// `fmt_redacted`: `Debug` of the struct with each sensitive field shown as `<redacted>`.
fn fmt_redacted(event: &Event<'_>) -> TokenStream {
    let struct_name = unraw(event.ident);
    let fields = event.fields.iter().map(|field| {
        let ident = field.ident;
        let name = unraw(ident);
        let value = if field.hidden() {
            quote!(&::pegasus_events::__private::RedactedField)
        } else {
            // Spanned at the field's type, so a field without `Debug` is reported there, with
            // the helper's name in the note.
            let member = respanned(ident, field.ty);
            quote_spanned! {field.ty.span()=>
                field_must_implement_debug_or_be_sensitive(&self.#member)
            }
        };
        quote! {
            ::core::fmt::DebugStruct::field(&mut debug, #name, #value);
        }
    });
    quote! {
        fn fmt_redacted(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
            #[allow(dead_code)]
            fn field_must_implement_debug_or_be_sensitive<T: ::core::fmt::Debug>(
                value: &T,
            ) -> &dyn ::core::fmt::Debug {
                value
            }
            let mut debug = ::core::fmt::Formatter::debug_struct(f, #struct_name);
            #(#fields)*
            ::core::fmt::DebugStruct::finish(&mut debug)
        }
    }
}

/// The pieces `upcast_from = Older` adds.
struct Upcast {
    /// `OLDEST_VERSION`, taken from the older type, which takes it from its own older type.
    oldest_version: TokenStream,
    /// `decode_version`, which hands older versions to the older type and converts.
    decode_version: TokenStream,
    /// Compile-time checks that the two types are versions of the same event.
    checks: TokenStream,
}

fn upcast(event: &Event<'_>, older: &Path) -> Upcast {
    let ident = event.ident;
    let older_name = path_to_string(older);
    let version = event.container.version;

    let oldest_version = quote! {
        const OLDEST_VERSION: u32 = <#older as ::pegasus_events::Event>::OLDEST_VERSION;
    };

    // Spanned at the path, so a missing `From<Older> for Self` is reported there.
    let into = quote_spanned! {older.span()=>
        ::core::convert::Into::<#ident>::into(older)
    };
    let decode_version = quote! {
        fn decode_version(
            version: u32,
            payload: &[u8],
        ) -> ::core::result::Result<Self, ::pegasus_events::Error> {
            ::pegasus_events::__private::check_version::<Self>(version)?;
            if version < <Self as ::pegasus_events::Event>::VERSION {
                let older = <#older as ::pegasus_events::Event>::decode_version(version, payload)?;
                return ::core::result::Result::Ok(#into);
            }
            ::pegasus_events::__private::decode_payload::<Self>(payload)
        }
    };

    let same = |constant: &str, key: Symbol, why: &str| {
        let constant = syn::Ident::new(constant, proc_macro2::Span::call_site());
        let message = format_message(&format!(
            "`{ident}` upcasts from `{older_name}`, so both must have the same `{key}`: {why}"
        ));
        quote_spanned! {older.span()=>
            const _: () = ::core::assert!(
                ::pegasus_events::__private::str_eq(
                    <#older as ::pegasus_events::Event>::#constant,
                    <#ident as ::pegasus_events::Event>::#constant,
                ),
                #message,
            );
        }
    };
    let same_topic = same(
        "TOPIC",
        TOPIC,
        "every version of an event is published to one topic",
    );
    let same_name = same(
        "NAME",
        NAME,
        "every version of an event has one type name (`ce_type`); the name defaults to the \
         struct's identifier, so give both the same `name = \"...\"`",
    );
    let lower_version = format_message(&format!(
        "`{ident}` (version {version}) upcasts from `{older_name}`, so `{older_name}` must have \
         a lower `version`"
    ));
    let checks = quote_spanned! {older.span()=>
        #same_topic
        #same_name
        const _: () = ::core::assert!(
            <#older as ::pegasus_events::Event>::VERSION
                < <#ident as ::pegasus_events::Event>::VERSION,
            #lower_version,
        );
    };

    Upcast {
        oldest_version,
        decode_version,
        checks,
    }
}

/// The field's identifier with the span of its type, so that an expression built from both
/// is reported at the type alone.
fn respanned(ident: &syn::Ident, ty: &syn::Type) -> syn::Ident {
    let mut ident = ident.clone();
    ident.set_span(ty.span());
    ident
}

/// A string literal usable as the message of `assert!`, which treats it as a format string.
fn format_message(message: &str) -> Literal {
    Literal::string(&message.replace('{', "{{").replace('}', "}}"))
}

/// A path as the user would write it: `crate::v1::ShipmentCreated`, not `crate :: v1 :: ..`.
fn path_to_string(path: &Path) -> String {
    let mut out = String::new();
    if path.leading_colon.is_some() {
        out.push_str("::");
    }
    for (i, segment) in path.segments.iter().enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        out.push_str(&unraw(&segment.ident));
        if !segment.arguments.is_none() {
            out.push_str(
                &segment
                    .arguments
                    .to_token_stream()
                    .to_string()
                    .replace(' ', ""),
            );
        }
    }
    out
}

/// Wraps generated items in an anonymous const, like serde's `dummy.rs`.
fn wrap_in_const(code: TokenStream) -> TokenStream {
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::absolute_paths)]
        const _: () = {
            #code
        };
    }
}
