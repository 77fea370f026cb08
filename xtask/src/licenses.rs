//! `THIRD-PARTY-LICENSES`: the licence notices of everything the static binary links, which
//! must ship with it (the tarball, the Debian package and the image carry it).
//!
//! The crates come from `cargo metadata` for the musl target: the resolve graph walked from
//! `sentinel-user` over normal dependencies (no dev or build dependencies; proc macros are
//! normal dependencies and stay listed). Each crate's entry holds the licence, copyright and
//! notice files of its source directory, verbatim (a text already printed is named, not
//! repeated). A crate whose source has no such file gets its manifest's authors as the
//! copyright holders and the standard text of its licence as other crates ship it; when no text
//! can be found, generation fails naming the crate: a crate is never skipped. Then what the
//! Rust toolchain links into every binary of the musl target, with the notices the toolchain
//! ships for it: musl libc, the Rust standard library and LLVM's libunwind. At the top, what
//! the LGPL asks when an LGPL crate is statically linked (btf-rs was one until sentinel read
//! BTF itself).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::{
    build_ebpf,
    dist::{MUSL, VERSION},
};

pub const FILE_NAME: &str = "THIRD-PARTY-LICENSES";

/// The package whose binary ships.
const ROOT_PACKAGE: &str = "sentinel-user";

const RULE: &str =
    "================================================================================";

/// musl's notice, for a toolchain that does not ship musl's own COPYRIGHT file (see
/// [`musl_copyright_file`]). Its MIT permission text follows it.
const MUSL_COPYRIGHT: &str = "Copyright © 2005-2020 Rich Felker, et al.";

/// Runs `cargo metadata` for the musl target (offline: dist needs no network) and renders the
/// notices of sentinel-user's dependency graph.
pub fn generate(root: &Path) -> Result<String> {
    let out = Command::new(build_ebpf::cargo())
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            MUSL,
        ])
        .arg("--offline")
        .output()
        .context("cargo metadata: cannot start cargo")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let metadata: Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata: not JSON")?;
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .map(|commit| {
            let dirty = Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .current_dir(root)
                .output()
                .is_ok_and(|o| !o.stdout.is_empty());
            if dirty {
                format!("{commit} with uncommitted changes")
            } else {
                commit
            }
        });
    render(
        &metadata,
        ROOT_PACKAGE,
        &Build {
            version: VERSION.into(),
            commit,
            musl_copyright: musl_copyright_file()?,
            toolchain: Toolchain::read()?,
        },
    )
}

/// What the text says about the build itself.
pub struct Build {
    pub version: String,
    pub commit: Option<String>,
    /// musl's COPYRIGHT file, when the toolchain ships it.
    pub musl_copyright: Option<String>,
    pub toolchain: Toolchain,
}

/// The notices the Rust toolchain ships (in its `rustc` component, `share/doc/rust/`) for what
/// it links into every binary: the standard library, and LLVM's libunwind, the unwinder of the
/// musl target (its self-contained `libunwind.a`).
pub struct Toolchain {
    /// `rustc --version`.
    pub rustc: String,
    /// `COPYRIGHT-library.html` as text: the standard library's notices and those of the
    /// crates it is built from.
    pub std_notices: String,
    /// The `src/llvm-project` entry of `COPYRIGHT.html`, as text: libunwind's licence and
    /// copyright holders.
    pub llvm_notice: String,
    /// `licenses/*.txt`: SPDX id -> text, for the ids of `llvm_notice`.
    pub texts: Vec<(String, String)>,
}

/// The licences of the `src/llvm-project` entry, whose texts are printed with it.
const LLVM_LICENCES: [&str; 3] = ["Apache-2.0", "LLVM-exception", "NCSA"];

impl Toolchain {
    fn read() -> Result<Self> {
        let doc = sysroot()?.join("share/doc/rust");
        let read = |rel: &str| {
            fs::read_to_string(doc.join(rel)).with_context(|| {
                format!(
                    "the Rust toolchain ships no {} (its rustc component's notices): the \
                     notices of what it links into the binary cannot be included",
                    doc.join(rel).display()
                )
            })
        };
        let std_notices = html_text(&read("COPYRIGHT-library.html")?);
        let llvm_notice = llvm_entry(&html_text(&read("COPYRIGHT.html")?))?;
        let mut texts = Vec::new();
        for id in LLVM_LICENCES {
            texts.push((
                id.to_string(),
                normalize(&read(&format!("licenses/{id}.txt"))?),
            ));
        }
        Ok(Self {
            rustc: rustc_output(&["--version"])?,
            std_notices,
            llvm_notice,
            texts,
        })
    }
}

/// The toolchain's root (`rustc --print sysroot`).
fn sysroot() -> Result<PathBuf> {
    rustc_output(&["--print", "sysroot"]).map(PathBuf::from)
}

/// What `$RUSTC` (as cargo would run it, else `rustc`) prints for `args`.
fn rustc_output(args: &[&str]) -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args(args)
        .output()
        .with_context(|| format!("{rustc} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("{rustc} {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The `src/llvm-project` entry of the toolchain's notices (as text): from its
/// `File/Directory:` line to the next entry or section.
fn llvm_entry(notices: &str) -> Result<String> {
    const START: &str = "File/Directory: src/llvm-project\n";
    let at = notices
        .find(START)
        .ok_or_else(|| anyhow!("the Rust toolchain's COPYRIGHT has no src/llvm-project entry"))?;
    let tail = &notices[at + START.len()..];
    let end = ["File/Directory:", "Out-of-tree dependencies"]
        .iter()
        .filter_map(|next| tail.find(next))
        .min()
        .unwrap_or(tail.len());
    let entry = normalize(
        &notices[at..at + START.len() + end]
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    if !entry.contains("LLVM-exception") {
        bail!("the Rust toolchain's src/llvm-project entry names no LLVM-exception: {entry}");
    }
    Ok(entry)
}

/// The text of an HTML page: tags dropped, character references decoded, trailing blanks and
/// runs of blank lines removed (the toolchain's notices are plain HTML: no script or style).
fn html_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(at) = rest.find(['<', '&']) {
        text.push_str(&rest[..at]);
        rest = &rest[at..];
        if rest.starts_with('<') {
            // The head holds only the title, which the body repeats.
            let close = if rest.starts_with("<head>") {
                "</head>"
            } else {
                ">"
            };
            rest = rest
                .find(close)
                .map_or("", |end| &rest[end + close.len()..]);
            continue;
        }
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let c = match &rest[1..end] {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                r => r
                    .strip_prefix("#x")
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| r.strip_prefix('#').map(str::parse))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                text.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                text.push('&');
                rest = &rest[1..];
            }
        }
    }
    text.push_str(rest);
    let mut out = String::with_capacity(text.len());
    let mut blank = true;
    for line in text.lines().map(str::trim_end) {
        if line.is_empty() && blank {
            continue;
        }
        blank = line.is_empty();
        out.push_str(line);
        out.push('\n');
    }
    normalize(&out)
}

/// One package of the graph.
#[derive(Debug)]
struct Package {
    name: String,
    version: String,
    license: Option<String>,
    repository: Option<String>,
    authors: Vec<String>,
    /// The directory of its manifest: its source.
    dir: PathBuf,
    /// `license-file` of the manifest, relative to `dir`.
    license_file: Option<String>,
}

impl Package {
    fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// The packages reached from `root` (a workspace member) over normal dependency edges, the
/// workspace's own crates left out, sorted by name and version.
fn graph(metadata: &Value, root: &str) -> Result<Vec<Package>> {
    let str_field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let workspace: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .ok_or_else(|| anyhow!("cargo metadata: no workspace_members"))?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let packages: HashMap<&str, &Value> = metadata["packages"]
        .as_array()
        .ok_or_else(|| anyhow!("cargo metadata: no packages"))?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .ok_or_else(|| anyhow!("cargo metadata: no resolve graph"))?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root_id = workspace
        .iter()
        .copied()
        .find(|id| packages.get(id).is_some_and(|p| p["name"] == root))
        .ok_or_else(|| anyhow!("cargo metadata: no workspace package {root}"))?;
    let mut seen = BTreeSet::from([root_id]);
    let mut todo = vec![root_id];
    while let Some(id) = todo.pop() {
        let node = nodes
            .get(id)
            .ok_or_else(|| anyhow!("cargo metadata: {id} not in the resolve graph"))?;
        for dep in node["deps"].as_array().into_iter().flatten() {
            let kinds = dep["dep_kinds"]
                .as_array()
                .ok_or_else(|| anyhow!("cargo metadata: a dependency of {id} has no dep_kinds"))?;
            // kind null: a normal dependency (the others are "dev" and "build"). The target
            // filter was applied by --filter-platform.
            if kinds.iter().any(|k| k["kind"].is_null())
                && let Some(dep_id) = dep["pkg"].as_str()
                && seen.insert(dep_id)
            {
                todo.push(dep_id);
            }
        }
    }
    let mut out = Vec::new();
    for id in seen.into_iter().filter(|id| !workspace.contains(id)) {
        let p = packages
            .get(id)
            .ok_or_else(|| anyhow!("cargo metadata: package {id} missing"))?;
        let manifest = str_field(p, "manifest_path")
            .ok_or_else(|| anyhow!("cargo metadata: {id} has no manifest_path"))?;
        out.push(Package {
            name: str_field(p, "name").unwrap_or_default(),
            version: str_field(p, "version").unwrap_or_default(),
            license: str_field(p, "license").filter(|l| !l.trim().is_empty()),
            repository: str_field(p, "repository").filter(|r| !r.trim().is_empty()),
            authors: p["authors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            dir: Path::new(&manifest)
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf(),
            license_file: str_field(p, "license_file"),
        });
    }
    out.sort_by(|a, b| {
        (&a.name, version_key(&a.version), &a.version).cmp(&(
            &b.name,
            version_key(&b.version),
            &b.version,
        ))
    });
    Ok(out)
}

/// major.minor.patch as numbers, so 0.10 sorts after 0.9.
fn version_key(v: &str) -> Vec<u64> {
    v.split(['-', '+'])
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or(0))
        .collect()
}

/// Whether a file name is a licence, copyright or notice file.
fn is_licence_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["license", "licence", "copying", "notice"]
        .iter()
        .any(|p| lower.starts_with(p))
        // Source code named after a licence (a `license.rs` module) is not a notice.
        && !lower.ends_with(".rs")
}

/// The licence files of a source directory and its subdirectories (bundled code such as
/// tikv-jemalloc-sys's `jemalloc/COPYING`), as (path relative to `dir`, text), sorted by path.
fn licence_files(p: &Package) -> Result<Vec<(String, String)>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for e in entries {
            let path = e.path();
            // file_type does not follow symlinks: a linked directory is not walked (no loops).
            let kind = e.file_type()?;
            if kind.is_dir() {
                walk(&path, base, out)?;
            } else if path.is_file() && is_licence_name(&e.file_name().to_string_lossy()) {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                out.push((rel.to_string_lossy().into_owned(), path));
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(&p.dir, &p.dir, &mut found)?;
    // A `license-file` of another name (the manifest names it: it is the licence).
    if let Some(extra) = &p.license_file {
        let path = p.dir.join(extra);
        let rel = path
            .strip_prefix(&p.dir)
            .map(|r| r.to_string_lossy().into_owned())
            // Outside the source (an absolute path): its file name, no path of this machine.
            .unwrap_or_else(|_| {
                Path::new(extra)
                    .file_name()
                    .map_or_else(|| extra.clone(), |n| n.to_string_lossy().into_owned())
            });
        if !found.iter().any(|(r, _)| *r == rel) {
            found.push((rel, path));
        }
    }
    found
        .into_iter()
        .map(|(rel, path)| {
            let bytes = fs::read(&path)
                .with_context(|| format!("{}: reading {}", p.label(), path.display()))?;
            Ok((rel, normalize(&String::from_utf8_lossy(&bytes))))
        })
        .collect()
}

/// Line ends and trailing blanks evened out, so texts that differ only there are one text.
fn normalize(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .skip_while(|l| l.is_empty())
        .collect();
    let end = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    let mut s = lines[..end].join("\n");
    s.push('\n');
    s
}

/// The standard texts of the licences a crate may declare without shipping the file, taken
/// from the files other crates ship: SPDX id -> (text, where it was taken from). For MIT, the
/// permission text only (from "Permission is hereby granted"), to follow a copyright line.
fn standard_texts(files: &[(String, String, String)]) -> BTreeMap<&'static str, (String, String)> {
    // (id, candidate text, source) for every file that is one standard licence alone.
    let mut candidates: BTreeMap<&'static str, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (label, rel, text) in files {
        let source = format!("{label}, {rel}");
        if text.trim_start().starts_with("Apache License")
            && text.contains("Version 2.0, January 2004")
            && text.contains("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION")
            && !text.contains("Permission is hereby granted")
        {
            candidates
                .entry("Apache-2.0")
                .or_default()
                .entry(text.clone())
                .or_default()
                .push(source);
        } else if let Some(at) = text.find("Permission is hereby granted, free of charge")
            // Only a title and copyright lines before it; nothing but the permission after.
            && at < 600
            && text[at..]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .ends_with("OTHER DEALINGS IN THE SOFTWARE.")
            && text[at..].matches("Permission is hereby granted").count() == 1
        {
            candidates
                .entry("MIT")
                .or_default()
                .entry(text[at..].to_string())
                .or_default()
                .push(source);
        }
    }
    // The text most crates ship (ties: the first in order), from the first crate shipping it.
    candidates
        .into_iter()
        .filter_map(|(id, texts)| {
            let (text, sources) = texts
                .into_iter()
                .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(&a.0)))?;
            Some((id, (text, sources[0].clone())))
        })
        .collect()
}

/// An SPDX licence expression, with the older `/` for OR; `WITH` exceptions and `+` are kept
/// on the licence id they modify (the text needed is the licence's).
#[derive(Debug)]
enum Expr {
    Id(String),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    fn parse(s: &str) -> Result<Expr> {
        let spaced = s
            .replace('(', " ( ")
            .replace(')', " ) ")
            .replace('/', " OR ");
        let tokens: Vec<&str> = spaced.split_whitespace().collect();
        let mut at = 0;
        let e = Self::or(&tokens, &mut at)?;
        if at != tokens.len() {
            bail!("licence expression {s:?}: unexpected {:?}", tokens[at]);
        }
        Ok(e)
    }

    fn or(t: &[&str], at: &mut usize) -> Result<Expr> {
        Self::chain(t, at, "OR", Self::and, Expr::Or)
    }

    fn and(t: &[&str], at: &mut usize) -> Result<Expr> {
        Self::chain(t, at, "AND", Self::primary, Expr::And)
    }

    /// `operand (op operand)*`; one operand alone is itself.
    fn chain(
        t: &[&str],
        at: &mut usize,
        op: &str,
        operand: fn(&[&str], &mut usize) -> Result<Expr>,
        joined: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr> {
        let mut v = vec![operand(t, at)?];
        while t.get(*at) == Some(&op) {
            *at += 1;
            v.push(operand(t, at)?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { joined(v) })
    }

    fn primary(t: &[&str], at: &mut usize) -> Result<Expr> {
        match t.get(*at) {
            Some(&"(") => {
                *at += 1;
                let e = Self::or(t, at)?;
                if t.get(*at) != Some(&")") {
                    bail!("licence expression: `(` not closed");
                }
                *at += 1;
                Ok(e)
            }
            Some(id) if !["OR", "AND", "WITH", ")"].contains(id) => {
                *at += 1;
                if t.get(*at) == Some(&"WITH") {
                    *at += 2;
                }
                Ok(Expr::Id(id.trim_end_matches('+').to_string()))
            }
            other => bail!("licence expression: a licence expected, found {other:?}"),
        }
    }

    /// Whether texts for `known` ids satisfy the expression (all of an AND, one of an OR).
    fn satisfied(&self, known: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Expr::Id(id) => known(id),
            Expr::And(v) => v.iter().all(|e| e.satisfied(known)),
            Expr::Or(v) => v.iter().any(|e| e.satisfied(known)),
        }
    }

    fn ids(&self, out: &mut Vec<String>) {
        match self {
            Expr::Id(id) => {
                if !out.contains(id) {
                    out.push(id.clone());
                }
            }
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.ids(out)),
        }
    }
}

/// Appends `text` as a paragraph wrapped at 80 columns (a longer word, a URL, on a line of its
/// own), then a blank line.
fn paragraph(out: &mut String, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > 80 {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push_str("\n\n");
}

/// The texts written so far: a repeated text is named instead of printed again.
#[derive(Default)]
struct Printed(HashMap<String, String>);

impl Printed {
    /// Appends `text` under `heading`, or a pointer to where it was printed.
    fn write(&mut self, out: &mut String, heading: &str, text: &str, origin: String) {
        if let Some(first) = self.0.get(text) {
            let _ = writeln!(out, "--- {heading}: the same text as {first}, above ---\n");
        } else {
            let _ = writeln!(out, "--- {heading} ---\n{text}");
            self.0.insert(text.to_string(), origin);
        }
    }
}

/// The whole text, from `cargo metadata` output (`metadata`) and the package to start from.
pub fn render(metadata: &Value, root: &str, build: &Build) -> Result<String> {
    let packages = graph(metadata, root)?;
    let mut files = Vec::new();
    for p in &packages {
        files.push(licence_files(p)?);
    }
    let all: Vec<(String, String, String)> = packages
        .iter()
        .zip(&files)
        .flat_map(|(p, fs)| fs.iter().map(|(r, t)| (p.label(), r.clone(), t.clone())))
        .collect();
    let standard = standard_texts(&all);

    let mut out = String::new();
    let title = format!("Third-party software in sentinel {}", build.version);
    let _ = writeln!(out, "{title}\n{}\n", "=".repeat(title.chars().count()));
    paragraph(
        &mut out,
        &format!(
            "The static binary `sentinel` ({MUSL}) contains the Rust crates listed below ({}), \
             the jemalloc allocator (bundled by tikv-jemalloc-sys: its jemalloc/COPYING) and, \
             last, what the Rust toolchain links into every binary of that target: musl libc, \
             the Rust standard library and LLVM's libunwind. For each crate: its name, version, the licence its manifest \
             declares, its repository, and the licence, copyright and notice files of its \
             source, verbatim (a text printed earlier is named instead of repeated). The crates \
             are what cargo resolves for sentinel's normal dependencies on this target with the \
             features of the whole workspace, so a crate the binary does not use may be listed; \
             none it uses is left out.",
            packages.len()
        ),
    );
    if let Some(commit) = &build.commit {
        paragraph(
            &mut out,
            &format!("Built from the sentinel source of commit {commit}."),
        );
    }

    // What the LGPL asks of a work that statically links an LGPL library: the library's source,
    // and the work's in a form that can be relinked against a modified library (section 6).
    for p in packages
        .iter()
        .filter(|p| p.license.as_deref().is_some_and(|l| l.contains("LGPL")))
    {
        let heading = format!("{} (LGPL)", p.name);
        let _ = writeln!(out, "{heading}\n{}\n", "-".repeat(heading.chars().count()));
        paragraph(
            &mut out,
            &format!(
                "sentinel is statically linked with the library {name} {version}, which is used \
                 under the GNU Lesser General Public License ({license}); the licence text is in \
                 the entry of {name} below. The complete source of {name} {version} is published \
                 on crates.io (https://crates.io/crates/{name}/{version}){repo}. As section 6 of \
                 the LGPL 2.1 asks, the complete source of sentinel {sv}, with the Cargo.lock \
                 this binary was built from, is available from whoever distributed this binary \
                 to you, so that you can modify {name} and relink sentinel against your version: \
                 point Cargo.lock at your copy (a [patch.crates-io] entry in Cargo.toml) and run \
                 `cargo xtask dist`, which builds this same static binary.",
                name = p.name,
                version = p.version,
                license = p.license.as_deref().unwrap_or_default(),
                repo = p
                    .repository
                    .as_deref()
                    .map(|r| format!("; its repository is {r}"))
                    .unwrap_or_default(),
                sv = build.version,
            ),
        );
    }

    let mut printed = Printed::default();
    for (p, files) in packages.iter().zip(&files) {
        let _ = writeln!(out, "{RULE}\n{}", p.label());
        let _ = writeln!(
            out,
            "License: {}",
            p.license.as_deref().unwrap_or("(none declared)")
        );
        if let Some(r) = &p.repository {
            let _ = writeln!(out, "Repository: {r}");
        }
        out.push('\n');
        if !files.is_empty() {
            for (rel, text) in files {
                printed.write(&mut out, rel, text, format!("{}, {rel}", p.label()));
            }
            continue;
        }
        // No licence file in its source: the standard text of its licence, with its authors
        // as the copyright holders.
        let expr = p.license.as_deref().ok_or_else(|| {
            anyhow!(
                "{}: no licence text can be found (no LICENSE/LICENCE/COPYING/NOTICE file in {} \
                 and no `license` in its manifest)",
                p.label(),
                p.dir.display()
            )
        })?;
        let parsed = Expr::parse(expr).with_context(|| p.label())?;
        if !parsed.satisfied(&|id| standard.contains_key(id)) {
            let mut ids = Vec::new();
            parsed.ids(&mut ids);
            let missing: Vec<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|id| !standard.contains_key(id))
                .collect();
            bail!(
                "{}: no licence text can be found: its source ({}) has no LICENSE/LICENCE/COPYING/\
                 NOTICE file, and no other package ships a standard text of {} (license = \
                 \"{expr}\")",
                p.label(),
                p.dir.display(),
                missing.join(", ")
            );
        }
        let holders = if p.authors.is_empty() {
            format!("the authors of {}", p.name)
        } else {
            p.authors.join(", ")
        };
        paragraph(
            &mut out,
            &format!(
                "Its source has no licence file. Copyright holders (its manifest's authors): \
                 {holders}."
            ),
        );
        let mut ids = Vec::new();
        parsed.ids(&mut ids);
        for id in ids {
            let Some((text, source)) = standard.get(id.as_str()) else {
                continue;
            };
            if id == "MIT" {
                let heading = format!("MIT (the standard text, as in {source}, with its authors)");
                let with_holders = format!("Copyright (c) {holders}\n\n{text}");
                printed.write(&mut out, &heading, &with_holders, p.label());
            } else {
                let heading = format!("{id} (the standard text)");
                printed.write(&mut out, &heading, text, source.clone());
            }
        }
    }

    // musl is the libc of the musl target, linked into the binary from the Rust toolchain
    // (its self-contained libc.a): its MIT licence asks for its notice with the binary too.
    let _ = writeln!(
        out,
        "{RULE}\nmusl libc\nLicense: MIT\nRepository: https://git.musl-libc.org/cgit/musl\n"
    );
    match &build.musl_copyright {
        Some(text) => printed.write(&mut out, "COPYRIGHT", &normalize(text), "musl".into()),
        None => {
            let (mit, _) = standard.get("MIT").ok_or_else(|| {
                anyhow!("musl libc: no MIT permission text found in any package for its notice")
            })?;
            paragraph(
                &mut out,
                &format!(
                    "The libc of the Rust toolchain's {MUSL} target (self-contained), linked \
                     into the binary, is musl, licensed under the standard MIT licence:"
                ),
            );
            let _ = writeln!(out, "{MUSL_COPYRIGHT}\n\n{mit}");
        }
    }

    // The standard library (core, alloc, std) is compiled into every Rust binary, and the
    // musl target links LLVM's libunwind: their notices as the toolchain ships them.
    let tc = &build.toolchain;
    let _ = writeln!(
        out,
        "{RULE}\nThe Rust standard library\nLicense: Apache-2.0 OR MIT (exceptions in its \
         notices)\nRepository: https://github.com/rust-lang/rust\n"
    );
    paragraph(
        &mut out,
        &format!(
            "core, alloc, std and the crates they are built from, compiled into the binary by \
             {}. Their notices, as the toolchain ships them (share/doc/rust/\
             COPYRIGHT-library.html, as text):",
            tc.rustc
        ),
    );
    printed.write(
        &mut out,
        "COPYRIGHT-library",
        &tc.std_notices,
        "the Rust standard library".into(),
    );
    let _ = writeln!(
        out,
        "{RULE}\nlibunwind (LLVM)\nLicense: Apache-2.0 WITH LLVM-exception AND NCSA\n\
         Repository: https://github.com/llvm/llvm-project\n"
    );
    paragraph(
        &mut out,
        &format!(
            "The unwinder of the Rust toolchain's {MUSL} target (self-contained libunwind.a), \
             linked into the binary. Its entry in the toolchain's notices (share/doc/rust/\
             COPYRIGHT.html), then the licence texts it names (share/doc/rust/licenses/):"
        ),
    );
    let _ = writeln!(out, "{}", tc.llvm_notice);
    for (id, text) in &tc.texts {
        printed.write(&mut out, id, text, format!("libunwind (LLVM), {id}"));
    }
    Ok(out)
}

/// musl's COPYRIGHT file from the musl target of the Rust toolchain, if it ships one. rustup's
/// musl target carries musl's libc.a (self-contained) but, as of Rust 1.95, not its COPYRIGHT:
/// then [`render`] writes musl's MIT notice (MUSL_COPYRIGHT and the MIT text) itself.
fn musl_copyright_file() -> Result<Option<String>> {
    let target = sysroot()?.join("lib/rustlib").join(MUSL);
    fn find(dir: &Path) -> Option<PathBuf> {
        let mut entries: Vec<_> = fs::read_dir(dir).ok()?.flatten().collect();
        entries.sort_by_key(fs::DirEntry::file_name);
        for e in entries {
            let kind = e.file_type().ok()?;
            if kind.is_dir() {
                if let Some(p) = find(&e.path()) {
                    return Some(p);
                }
            } else if e.file_name() == "COPYRIGHT" {
                return Some(e.path());
            }
        }
        None
    }
    find(&target)
        .map(|p| fs::read_to_string(&p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real graph, checked against `cargo tree` (an independent walk).
    #[test]
    fn every_crate_of_the_binary_is_listed_with_jemalloc_musl_and_lgpl_paragraphs() {
        let root = build_ebpf::workspace_root();
        let text = generate(&root).unwrap();
        let tree = Command::new(build_ebpf::cargo())
            .current_dir(&root)
            .args(["tree", "-p", ROOT_PACKAGE, "-e", "normal", "--target", MUSL])
            .args(["--prefix", "none", "--offline"])
            .output()
            .unwrap();
        assert!(
            tree.status.success(),
            "{}",
            String::from_utf8_lossy(&tree.stderr)
        );
        let tree = String::from_utf8(tree.stdout).unwrap();
        let mut crates = BTreeSet::new();
        for line in tree.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(version)) = (words.next(), words.next()) else {
                continue;
            };
            // The workspace's own crates (a path in parentheses) are not third-party.
            if line.contains(&format!("({})", root.display())) || line.contains("(/") {
                continue;
            }
            crates.insert((
                name.to_string(),
                version.trim_start_matches('v').to_string(),
            ));
        }
        assert!(crates.len() > 150, "{} crates in cargo tree", crates.len());
        let headings: BTreeSet<&str> = text
            .split(&format!("{RULE}\n"))
            .skip(1)
            .filter_map(|entry| entry.lines().next())
            .collect();
        for (name, version) in &crates {
            assert!(
                headings.contains(format!("{name} {version}").as_str()),
                "{name} {version} not listed"
            );
        }
        // Every entry has a licence text or a pointer to one.
        for entry in text.split(&format!("{RULE}\n")).skip(1) {
            assert!(
                entry.contains("\n--- ") || entry.starts_with("musl libc\n"),
                "{entry}"
            );
        }
        assert!(headings.contains("musl libc"));
        assert!(text.contains("Rich Felker"));
        // What the toolchain links, with the notices it ships: the standard library's (with
        // the crates it is built from) and libunwind's entry and licence texts.
        for needle in [
            "\nThe Rust standard library\n",
            "--- COPYRIGHT-library ---\n",
            "Copyright notices for The Rust Standard Library\n",
            "📦 hashbrown-",
            "\nlibunwind (LLVM)\n",
            "File/Directory: src/llvm-project\nLicense: Apache-2.0 WITH LLVM-exception",
            "LLVM Exceptions to the Apache 2.0 License",
            "University of Illinois",
        ] {
            assert!(text.contains(needle), "{needle:?} not in the text");
        }
        assert!(
            !text.contains("<p>") && !text.contains("&#34;"),
            "HTML left in"
        );

        // jemalloc's own notice, verbatim.
        let metadata: Value = serde_json::from_slice(
            &Command::new(build_ebpf::cargo())
                .current_dir(&root)
                // Filtered as `generate` does: a fresh machine's offline registry holds
                // only the crates of the platforms it builds for.
                .args(["metadata", "--format-version", "1", "--offline"])
                .args(["--filter-platform", MUSL])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let jemalloc = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "tikv-jemalloc-sys")
            .unwrap();
        let copying = Path::new(jemalloc["manifest_path"].as_str().unwrap())
            .with_file_name("jemalloc/COPYING");
        let copying = fs::read_to_string(copying).unwrap();
        assert!(copying.contains("Jason Evans"));
        assert!(text.contains(&normalize(&copying)), "jemalloc/COPYING");
        assert!(text.contains("--- jemalloc/COPYING ---\n"));

        // The LGPL paragraph at the top, before the first entry, for each LGPL crate of the
        // tree (btf-rs, when this was written), with its version.
        let lgpl: Vec<&(String, String)> = crates
            .iter()
            .filter(|(name, version)| {
                metadata["packages"].as_array().unwrap().iter().any(|p| {
                    p["name"] == name.as_str()
                        && p["version"] == version.as_str()
                        && p["license"].as_str().is_some_and(|l| l.contains("LGPL"))
                })
            })
            .collect();
        let top = text.split(RULE).next().unwrap();
        let flat = top.split_whitespace().collect::<Vec<_>>().join(" ");
        for (name, version) in &lgpl {
            assert!(top.contains(&format!("{name} (LGPL)\n")), "{top}");
            assert!(flat.contains(&format!("https://crates.io/crates/{name}/{version}")));
            assert!(flat.contains("section 6 of the LGPL 2.1"));
            assert!(flat.contains("with the Cargo.lock"));
        }
        assert_eq!(top.matches(" (LGPL)\n").count(), lgpl.len(), "{top}");
        if crates.iter().any(|(name, _)| name == "btf-rs") {
            assert!(lgpl.iter().any(|(name, _)| name == "btf-rs"));
            assert!(text.contains("GNU LESSER GENERAL PUBLIC LICENSE"));
        }
        // No path of this machine in the shipped text.
        assert!(!text.contains("/.cargo/"), "a local path");
    }

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xtask-licenses-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const MIT: &str = "MIT License\n\nCopyright (c) 2020 Somebody\n\nPermission is hereby \
         granted, free of charge, to any person obtaining a copy\nof this software ... IN NO \
         EVENT SHALL THE AUTHORS BE LIABLE ... OR OTHER DEALINGS IN THE\nSOFTWARE.\n";

    /// A crate of [`synthetic`]: name, licence, (path, text) of the files in its source.
    type Crate<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    /// `metadata` with the workspace crate `app` depending on `deps`, and on `tool` as a
    /// dev-dependency.
    fn synthetic(dir: &Path, deps: &[Crate]) -> Value {
        let mut packages = vec![serde_json::json!({
            "id": "app 0.1.0", "name": "app", "version": "0.1.0", "license": "MIT",
            "manifest_path": dir.join("app/Cargo.toml"), "authors": [],
        })];
        let mut app_deps = Vec::new();
        let mut nodes = Vec::new();
        let mut all = deps.to_vec();
        all.push(("tool", "GPL-3.0-only", &[]));
        for (name, licence, files) in all {
            let src = dir.join(format!("{name}-1.0.0"));
            for (rel, text) in files {
                let path = src.join(rel);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, text).unwrap();
            }
            fs::create_dir_all(&src).unwrap();
            let id = format!("{name} 1.0.0");
            packages.push(serde_json::json!({
                "id": id, "name": name, "version": "1.0.0", "license": licence,
                "repository": format!("https://example.org/{name}"),
                "manifest_path": src.join("Cargo.toml"), "authors": [format!("{name} maker")],
            }));
            let kind = if name == "tool" {
                "dev".into()
            } else {
                Value::Null
            };
            app_deps.push(serde_json::json!({"pkg": id, "dep_kinds": [{"kind": kind}]}));
            nodes.push(serde_json::json!({"id": id, "deps": []}));
        }
        nodes.push(serde_json::json!({"id": "app 0.1.0", "deps": app_deps}));
        serde_json::json!({
            "packages": packages,
            "workspace_members": ["app 0.1.0"],
            "resolve": {"nodes": nodes},
        })
    }

    fn build() -> Build {
        Build {
            version: "9.9.9".into(),
            commit: None,
            musl_copyright: None,
            toolchain: Toolchain {
                rustc: "rustc 9.9.9".into(),
                std_notices: "std notices\n".into(),
                llvm_notice: "File/Directory: src/llvm-project\n".into(),
                texts: LLVM_LICENCES
                    .iter()
                    .map(|id| (id.to_string(), format!("{id} text\n")))
                    .collect(),
            },
        }
    }

    #[test]
    fn a_crate_without_a_licence_file_gets_the_standard_text_and_its_authors() {
        let s = Scratch::new("standard");
        let metadata = synthetic(
            &s.0,
            &[
                ("withfile", "MIT OR Apache-2.0", &[("LICENSE-MIT", MIT)]),
                (
                    "again",
                    "MIT",
                    &[("LICENSE", MIT), ("vendor/NOTICE", "notice\n")],
                ),
                ("bare", "MIT/Apache-2.0", &[]),
                ("btf-rs", "LGPL-2.1-or-later", &[("LICENSE", "LGPL text\n")]),
            ],
        );
        let text = render(&metadata, "app", &build()).unwrap();
        for name in ["withfile", "again", "bare", "btf-rs"] {
            assert!(
                text.contains(&format!("{RULE}\n{name} 1.0.0\n")),
                "{name}: {text}"
            );
        }
        assert!(
            !text.contains("tool 1.0.0"),
            "a dev-dependency is listed: {text}"
        );
        assert!(
            !text.contains("\napp "),
            "the workspace crate is listed: {text}"
        );
        assert_eq!(
            text.matches("Permission is hereby granted").count(),
            3,
            "{text}"
        );
        assert!(text.contains("--- LICENSE-MIT: the same text as again 1.0.0, LICENSE, above"));
        assert!(text.contains("--- vendor/NOTICE ---\nnotice\n"));
        assert!(text.contains("Copyright (c) bare maker\n\nPermission is hereby granted"));
        assert!(text.contains("Copyright © 2005-2020 Rich Felker, et al."));
        assert!(
            text.contains("--- COPYRIGHT-library ---\nstd notices\n"),
            "{text}"
        );
        for id in LLVM_LICENCES {
            assert!(
                text.contains(&format!("--- {id} ---\n{id} text\n")),
                "{text}"
            );
        }
        // The LGPL paragraph comes first, naming the crate's source and sentinel's.
        let top = text.split(RULE).next().unwrap();
        assert!(top.contains("btf-rs (LGPL)\n"), "{top}");
        // As words: the paragraph is wrapped.
        let flat = top.split_whitespace().collect::<Vec<_>>().join(" ");
        for words in [
            "statically linked with the library btf-rs 1.0.0, which is used under the GNU Lesser \
             General Public License (LGPL-2.1-or-later)",
            "(https://crates.io/crates/btf-rs/1.0.0)",
            "As section 6 of the LGPL 2.1 asks, the complete source of sentinel 9.9.9, with the \
             Cargo.lock this binary was built from, is available",
            "relink sentinel against your version",
        ] {
            assert!(flat.contains(words), "{words}: {top}");
        }
        assert!(top.lines().all(|l| l.chars().count() <= 80), "{top}");
    }

    #[test]
    fn html_notices_become_text() {
        let html = "<head>\n<title>Notices</title>\n</head><h1>Notices</h1>\n\n\n<p>A &lt;b&gt; &amp; &#34;c&#34; &#x41; &bogus</p>  \n\
                    <ul>\n<li>File/Directory: src/llvm-project</li>\n<li>License: Apache-2.0 WITH \
                    LLVM-exception</li>\n\n<li>Copyright: 2010 Apple Inc</li></ul>\n\
                    <li>File/Directory: src/other</li>";
        let text = html_text(html);
        assert_eq!(
            text,
            "Notices\n\nA <b> & \"c\" A &bogus\n\nFile/Directory: src/llvm-project\nLicense: \
             Apache-2.0 WITH LLVM-exception\n\nCopyright: 2010 Apple Inc\nFile/Directory: \
             src/other\n"
        );
        assert_eq!(
            llvm_entry(&text).unwrap(),
            "File/Directory: src/llvm-project\nLicense: Apache-2.0 WITH LLVM-exception\n\
             Copyright: 2010 Apple Inc\n"
        );
        assert!(llvm_entry("File/Directory: src/other\n").is_err());
        // The last entry ends at the next section.
        assert_eq!(
            llvm_entry(
                "File/Directory: src/llvm-project\nLicense: A WITH LLVM-exception\n\
                 Out-of-tree dependencies\nmore\n"
            )
            .unwrap(),
            "File/Directory: src/llvm-project\nLicense: A WITH LLVM-exception\n"
        );
    }

    #[test]
    fn a_crate_whose_licence_text_cannot_be_found_fails_naming_it() {
        let s = Scratch::new("missing");
        let metadata = synthetic(
            &s.0,
            &[
                ("fine", "MIT", &[("LICENSE", MIT)]),
                ("bsdonly", "BSD-3-Clause", &[]),
            ],
        );
        let e = format!("{:#}", render(&metadata, "app", &build()).unwrap_err());
        assert!(
            e.starts_with("bsdonly 1.0.0: no licence text can be found"),
            "{e}"
        );
        assert!(e.contains("BSD-3-Clause"), "{e}");
        // An OR is satisfied by one text; an AND is not.
        assert!(
            Expr::parse("BSD-3-Clause OR MIT")
                .unwrap()
                .satisfied(&|id| id == "MIT")
        );
        assert!(
            !Expr::parse("(MIT OR Apache-2.0) AND Unicode-3.0")
                .unwrap()
                .satisfied(&|id| id == "MIT")
        );
        assert!(
            Expr::parse("Apache-2.0 WITH LLVM-exception OR MIT")
                .unwrap()
                .satisfied(&|id| id == "Apache-2.0")
        );
        assert!(Expr::parse("MIT OR").is_err());
    }
}
