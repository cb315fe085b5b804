//! Collects every error found while reading and checking the input, so the user sees all
//! of their mistakes in one compile instead of one per compile.

use std::cell::RefCell;
use std::fmt::Display;

use proc_macro2::Span;
use quote::ToTokens;

/// The error collector shared by the parse and check stages.
///
/// Errors keep the span of the token that caused them; [`Ctxt::check`] combines them into
/// one [`syn::Error`], which expands to one `compile_error!` per message.
#[derive(Default)]
pub(crate) struct Ctxt {
    // A `RefCell` so that the stages can hold shared references to the context while they
    // also borrow the input.
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    /// An empty collector.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records `message`, spanned at the tokens of `tokens` (all of them, so a multi-token
    /// node such as a type or a path is underlined whole).
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&self, tokens: T, message: M) {
        self.push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records `message` at `span`.
    pub(crate) fn error_at<M: Display>(&self, span: Span, message: M) {
        self.push(syn::Error::new(span, message));
    }

    /// Records an error `syn` reported while parsing.
    pub(crate) fn syn_error(&self, error: syn::Error) {
        self.push(error);
    }

    fn push(&self, error: syn::Error) {
        self.errors.borrow_mut().push(error);
    }

    /// Consumes the collector: `Ok` if nothing was recorded, otherwise every error combined.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_inner().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}
