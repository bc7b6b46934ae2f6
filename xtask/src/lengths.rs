//! `./x lengths`: every function of the workspace's own Rust longer than a limit (80 lines by
//! default), counted from `fn` to its closing brace by parsing the source (syn), so braces in
//! strings and macros do not fool it. Test code (under `tests/` or `benches/`, a `#[test]`, or
//! inside a `#[cfg(test)]` module) is listed apart: the house rule is that no other function
//! passes the limit, and `./x test` holds it (`--check`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use syn::{spanned::Spanned as _, visit::Visit};

#[derive(clap::Args)]
pub struct LengthsArgs {
    /// A function longer than this many lines is listed.
    #[arg(long, default_value_t = 80)]
    pub max: usize,
    /// Fail when a function outside test code is longer than `--max`.
    #[arg(long)]
    pub check: bool,
}

/// One function over the limit.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LongFunction {
    pub lines: usize,
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    pub test: bool,
}

/// Folders that hold no code of the project's own (or none that builds with the workspace).
const SKIPPED_DIRS: &[&str] = &["vendor", "target", "node_modules", ".git", "results"];

pub fn run(args: &LengthsArgs) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let mut long = long_functions(&root, args.max)?;
    long.sort_by(|a, b| b.lines.cmp(&a.lines).then_with(|| a.cmp(b)));
    let (tests, code): (Vec<_>, Vec<_>) = long.iter().partition(|f| f.test);
    for (label, list) in [("outside tests", &code), ("test code", &tests)] {
        println!("{} functions over {} lines {label}:", list.len(), args.max);
        for f in list {
            println!(
                "  {:>4}  {}:{}  {}",
                f.lines,
                f.file.display(),
                f.line,
                f.name
            );
        }
    }
    if args.check && !code.is_empty() {
        anyhow::bail!(
            "{} functions outside tests are over {} lines (split them: a phase, a rule or a step each)",
            code.len(),
            args.max
        );
    }
    Ok(())
}

pub fn long_functions(root: &Path, max: usize) -> anyhow::Result<Vec<LongFunction>> {
    let mut files = Vec::new();
    collect_rust_files(root, &mut files)?;
    let mut long = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let relative = file.strip_prefix(root).unwrap_or(&file).to_path_buf();
        let test_file = relative
            .components()
            .any(|c| matches!(c.as_os_str().to_str(), Some("tests" | "benches")));
        // A file syn cannot parse (none today) is named, not counted as short.
        let parsed =
            syn::parse_file(&source).with_context(|| format!("parsing {}", relative.display()))?;
        let mut visitor = Lengths {
            file: &relative,
            max,
            in_test: test_file,
            found: &mut long,
        };
        visitor.visit_file(&parsed);
    }
    Ok(long)
}

fn collect_rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_ref()) && !name.starts_with('.') {
                collect_rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

struct Lengths<'a> {
    file: &'a Path,
    max: usize,
    in_test: bool,
    found: &'a mut Vec<LongFunction>,
}

impl Lengths<'_> {
    fn measure(&mut self, name: String, attrs: &[syn::Attribute], whole: proc_macro2::Span) {
        let lines = whole.end().line.saturating_sub(whole.start().line) + 1;
        if lines > self.max {
            self.found.push(LongFunction {
                lines,
                file: self.file.to_path_buf(),
                line: whole.start().line,
                name,
                test: self.in_test || is_test(attrs),
            });
        }
    }

    /// Visits an item's insides as test code when the item is marked as such.
    fn nested(&mut self, attrs: &[syn::Attribute], visit: impl FnOnce(&mut Self)) {
        let was = self.in_test;
        self.in_test |= is_test(attrs);
        visit(self);
        self.in_test = was;
    }
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        let path = attr.path();
        if path.is_ident("test") || path.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        path.is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

/// A function's span from `fn` (after its attributes and doc comment) to its closing brace.
fn fn_span(sig: &syn::Signature, block: &syn::Block) -> proc_macro2::Span {
    sig.fn_token
        .span
        .join(block.brace_token.span.close())
        .unwrap_or_else(|| block.span())
}

impl<'ast> Visit<'ast> for Lengths<'_> {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.measure(
            item.sig.ident.to_string(),
            &item.attrs,
            fn_span(&item.sig, &item.block),
        );
        self.nested(&item.attrs, |v| syn::visit::visit_item_fn(v, item));
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.measure(
            item.sig.ident.to_string(),
            &item.attrs,
            fn_span(&item.sig, &item.block),
        );
        self.nested(&item.attrs, |v| syn::visit::visit_impl_item_fn(v, item));
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            self.measure(
                item.sig.ident.to_string(),
                &item.attrs,
                fn_span(&item.sig, block),
            );
        }
        self.nested(&item.attrs, |v| syn::visit::visit_trait_item_fn(v, item));
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.nested(&item.attrs, |v| syn::visit::visit_item_mod(v, item));
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        self.nested(&item.attrs, |v| syn::visit::visit_item_impl(v, item));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(source: &str) -> Vec<(String, usize, bool)> {
        let mut found = Vec::new();
        let mut visitor = Lengths {
            file: Path::new("src/lib.rs"),
            max: 3,
            in_test: false,
            found: &mut found,
        };
        visitor.visit_file(&syn::parse_file(source).unwrap());
        found
            .into_iter()
            .map(|f| (f.name, f.lines, f.test))
            .collect()
    }

    #[test]
    fn counts_from_fn_to_the_closing_brace_and_marks_test_code() {
        let source = r#"
/// Four lines of doc comment
/// are not counted,
/// nor the attribute
#[inline]
fn long() {
    let a = "}";
    let b = 2;
}
fn short() { }
struct S;
impl S {
    fn method(&self) {
        one();
        two();
    }
}
#[cfg(test)]
mod tests {
    #[test]
    fn case() {
        a();
        b();
    }
    fn helper() {
        a();
        b();
    }
}
"#;
        assert_eq!(
            measure(source),
            vec![
                ("long".to_owned(), 4, false),
                ("method".to_owned(), 4, false),
                ("case".to_owned(), 4, true),
                ("helper".to_owned(), 4, true),
            ]
        );
    }
}
