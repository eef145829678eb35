//! README and docs/ guard, offline. Every relative link in README.md and docs/*.md names a
//! file that exists, and every `#anchor` (same file or another) is the GitHub slug of a
//! heading there; external http(s) links are only checked to be well formed, never fetched.
//! The README stays a front page (at most 250 lines) and links, with docs/README.md, every
//! docs file. No code block, table or run of lines appears twice, in one file or across files
//! (a corrupted edit once left a repeated fragment of the performance section at the README's
//! end).
mod util;

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

/// The README's budget: what it is, the two commands, the tour, the architecture, the links.
const README_MAX_LINES: usize = 250;

/// Blocks of a markdown file: fenced code blocks and tables, each as its text.
fn blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        if lines[i].trim_start().starts_with("```") {
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                i += 1;
            }
            out.push((start + 1, lines[start..=i.min(lines.len() - 1)].join("\n")));
        } else if lines[i].starts_with('|') {
            while i < lines.len() && lines[i].starts_with('|') {
                i += 1;
            }
            out.push((start + 1, lines[start..i].join("\n")));
            continue;
        }
        i += 1;
    }
    out
}

/// Every run of 3 consecutive non-blank lines (prose included), with its first line's number.
fn windows(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
    lines.windows(3).map(|w| (w[0].0, w.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n"))).collect()
}

fn repeats(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, block) in blocks(text) {
        if let Some(first) = seen.insert(block.clone(), line) {
            found.push(format!("the block at line {line} repeats the one at line {first}"));
        }
    }
    let mut runs: HashMap<String, usize> = HashMap::new();
    for (line, run) in windows(text) {
        if let Some(first) = runs.insert(run, line) {
            found.push(format!("lines {line}..{} repeat lines {first}..", line + 2));
        }
    }
    found
}

/// Blocks and runs of 3 lines that one file shares with another (each file's own repeats are
/// `repeats`' business). None is shared on purpose.
fn repeats_across(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut seen: HashMap<String, (&Path, usize)> = HashMap::new();
    for (path, text) in files {
        let mut mine: Vec<(usize, String)> = blocks(text);
        mine.extend(windows(text));
        for (line, key) in mine {
            match seen.get(&key) {
                Some((other, first)) if *other != path.as_path() => {
                    let message =
                        format!("{}:{line} repeats {}:{first}:\n{key}", path.display(), other.display());
                    // A three-line block is also a run of three lines: say it once.
                    if !found.contains(&message) {
                        found.push(message);
                    }
                }
                Some(_) => {}
                None => {
                    seen.insert(key, (path.as_path(), line));
                }
            }
        }
    }
    found
}

/// The lines of `text` outside fenced code blocks, with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if !fence {
            out.push((i + 1, line));
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation other than `-` and `_` removed,
/// spaces to `-` (the heading's rendered text: code spans lose their backticks).
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a file: its headings' slugs, a repeated one suffixed `-1`, `-2`, ….
fn anchors(text: &str) -> Vec<String> {
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim().trim_end_matches('#'));
        let n = count.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The inline links `[text](target)` of a file, with their lines (code blocks and code spans
/// left out).
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose(text) {
        // Drop code spans: what is between a pair of backticks is not markdown.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            out.push((n, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// `base` joined with `rel`, `.` and `..` resolved without touching the file system.
fn join(base: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn well_formed_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty()
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        && !url.chars().any(char::is_whitespace)
}

/// Every link of `files` (paths relative to the repository root) checked: a relative one names
/// a file in `files` or on disk under `root`, and its `#anchor` is a heading of that file.
fn broken_links(files: &BTreeMap<PathBuf, String>, root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        let dir = path.parent().unwrap_or(Path::new(""));
        for (line, target) in links(text) {
            let at = format!("{}:{line}: ({target})", path.display());
            if target.starts_with("http://") || target.starts_with("https://") {
                if !well_formed_url(&target) {
                    found.push(format!("{at}: not a well-formed URL"));
                }
                continue;
            }
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.starts_with('/')
            {
                found.push(format!("{at}: neither a relative path nor an http(s) URL"));
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if file.is_empty() { path.clone() } else { join(dir, file) };
            let text_there =
                files.get(&dest).cloned().or_else(|| std::fs::read_to_string(root.join(&dest)).ok());
            if !files.contains_key(&dest) && !root.join(&dest).exists() {
                found.push(format!("{at}: {} does not exist", dest.display()));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            match text_there {
                Some(t) if dest.extension().is_some_and(|e| e == "md") => {
                    if !anchors(&t).iter().any(|a| a == anchor) {
                        found
                            .push(format!("{at}: no heading of {} has the anchor #{anchor}", dest.display()));
                    }
                }
                _ => found.push(format!("{at}: #{anchor} into {}, which is not markdown", dest.display())),
            }
        }
    }
    found
}

/// The docs files neither README.md nor docs/README.md links to.
fn unlinked(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut linked = Vec::new();
    for index in ["README.md", "docs/README.md"] {
        if let Some(text) = files.get(Path::new(index)) {
            let dir = Path::new(index).parent().unwrap_or(Path::new(""));
            for (_, target) in links(text) {
                let file = target.split('#').next().unwrap_or("");
                if !file.is_empty() && !file.contains("://") {
                    linked.push(join(dir, file));
                }
            }
        }
    }
    files
        .keys()
        .filter(|p| p.starts_with("docs") && !linked.contains(p))
        .map(|p| format!("{} is linked from neither README.md nor docs/README.md", p.display()))
        .collect()
}

fn too_long(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let n = files.get(Path::new("README.md")).map_or(0, |t| t.lines().count());
    if n > README_MAX_LINES {
        vec![format!("README.md has {n} lines (at most {README_MAX_LINES}): move reference text into docs/")]
    } else {
        vec![]
    }
}

/// Every problem of a set of markdown files: links, anchors, the README's length, repeats
/// within a file and across files, docs files nobody links to.
fn problems(files: &BTreeMap<PathBuf, String>, root: &Path) -> Vec<String> {
    let mut found = broken_links(files, root);
    found.extend(too_long(files));
    for (path, text) in files {
        found.extend(repeats(text).into_iter().map(|r| format!("{} repeats itself: {r}", path.display())));
    }
    found.extend(repeats_across(files));
    found.extend(unlinked(files));
    found
}

/// README.md and every docs/*.md, by path relative to the repository root.
fn the_docs() -> BTreeMap<PathBuf, String> {
    let root = util::repo_root();
    let mut files = BTreeMap::new();
    files.insert(PathBuf::from("README.md"), std::fs::read_to_string(root.join("README.md")).unwrap());
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let rel = path.strip_prefix(&root).unwrap().to_path_buf();
            files.insert(rel, std::fs::read_to_string(&path).unwrap());
        }
    }
    files
}

#[test]
fn readme_repeats_no_block_table_or_run_of_lines() {
    let text = std::fs::read_to_string(util::repo_root().join("README.md")).unwrap();
    let found = repeats(&text);
    assert!(found.is_empty(), "README.md repeats itself:\n{}", found.join("\n"));
}

#[test]
fn readme_and_docs_links_anchors_length_and_repeats() {
    let files = the_docs();
    assert!(files.len() > 10, "docs/ holds one file per topic: {:?}", files.keys());
    let found = problems(&files, &util::repo_root());
    assert!(found.is_empty(), "README.md and docs/:\n{}", found.join("\n"));
}

#[test]
fn the_guard_catches_a_repeated_fragment() {
    let doc = "# t\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\ntext one\ntext two\ntext three\n\n```sh\nrun\n```\n";
    assert!(repeats(doc).is_empty(), "{:?}", repeats(doc));
    let corrupted = format!("{doc}\ncho two\n| a | b |\n|---|---|\n| 1 | 2 |\n");
    assert!(repeats(&corrupted).iter().any(|r| r.contains("block")), "{:?}", repeats(&corrupted));
    let prose = format!("{doc}\ntext one\ntext two\ntext three\n");
    assert!(!repeats(&prose).is_empty());
}

/// A small good set of files, then each check broken once.
#[test]
fn the_docs_guard_catches_each_break() {
    let root = Path::new("/nonexistent-root");
    let good = |readme: &str, docs_a: &str| -> BTreeMap<PathBuf, String> {
        BTreeMap::from([
            (PathBuf::from("README.md"), readme.to_string()),
            (
                PathBuf::from("docs/README.md"),
                "# Docs\n\n- [A](a.md)\n- [A's part](a.md#part-two-the-c-api)\n- [B](b.md#b)\n".into(),
            ),
            (PathBuf::from("docs/a.md"), docs_a.to_string()),
            (
                PathBuf::from("docs/b.md"),
                "# B\n\nBack to [the top](../README.md#x) and [A](a.md#part-two-the-c-api-1), [out](https://example.org/a#b).\n"
                    .into(),
            ),
        ])
    };
    let readme = "# X\n\nSee [docs](docs/README.md) and [here](#x).\n";
    let a = "# A\n\n## Part two: the C++ API\n\ntext\n\n## Part two: the C API\n\n```sh\n# not a heading\n```\n\n## Part two: the C API\n";
    let ok = good(readme, a);
    assert!(problems(&ok, root).is_empty(), "{:?}", problems(&ok, root));
    assert_eq!(anchors(a), ["a", "part-two-the-c-api", "part-two-the-c-api-1", "part-two-the-c-api-2"]);
    assert_eq!(slug("Keeping warm (`--keep-warm-us`)"), "keeping-warm---keep-warm-us");

    let fails = |files: BTreeMap<PathBuf, String>, want: &str| {
        let found = problems(&files, root);
        assert!(found.iter().any(|p| p.contains(want)), "wanted {want:?}, got {found:?}");
    };
    fails(
        good("# X\n\n[docs](docs/README.md) [bad](docs/a.md#part-three)\n", a),
        "has the anchor #part-three",
    );
    fails(good("# X\n\n[docs](docs/README.md) [bad](#nowhere)\n", a), "has the anchor #nowhere");
    fails(
        good("# X\n\n[docs](docs/README.md) [gone](docs/missing.md)\n", a),
        "docs/missing.md does not exist",
    );
    fails(good("# X\n\n[docs](docs/README.md) [web](https://exa mple.org)\n", a), "not a well-formed URL");
    let long = format!("{readme}{}", (0..248).map(|i| format!("line {i}\n")).collect::<String>());
    assert_eq!(long.lines().count(), 251);
    fails(good(&long, a), "README.md has 251 lines");
    let repeated = "# X\n\nSee [docs](docs/README.md).\n\n```sh\n# not a heading\n```\n";
    fails(good(repeated, a), "docs/a.md:9 repeats README.md:5");
    fails(good(&format!("{readme}\none\ntwo\nthree\n\none\ntwo\nthree\n"), a), "README.md repeats itself");
    let mut orphan = ok.clone();
    orphan.insert(PathBuf::from("docs/c.md"), "# C\n".into());
    fails(orphan, "docs/c.md is linked from neither");
}
