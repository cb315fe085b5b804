//! Compile-time behaviour of `#[derive(Event)]`: what it accepts, and the exact diagnostics
//! for what it rejects. Regenerate expected output with `TRYBUILD=overwrite` and read it.

#[test]
fn derive_ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
