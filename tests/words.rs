//! Command lines written as one template (shared by the tests and the benchmarks).

/// The words of a command line: `template` split at spaces, each `{}` replaced by the next of
/// `fill`, whole (a path with a space stays one word).
pub(crate) fn words<'a>(template: &'a str, fill: &[&'a str]) -> Vec<&'a str> {
    let mut fill = fill.iter();
    let out: Vec<&str> = template
        .split_whitespace()
        .map(|w| match w {
            "{}" => fill.next().expect("a value for every {} in the template"),
            w => w,
        })
        .collect();
    assert!(
        fill.next().is_none(),
        "more values than {{}} in {template:?}"
    );
    out
}
