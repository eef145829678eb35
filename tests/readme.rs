//! README guard: no code block, table or run of lines appears twice (a corrupted
//! edit once left a repeated fragment of the performance section at its end).
mod util;

use std::collections::HashMap;

/// Blocks of the README: fenced code blocks and tables, each as its text.
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

fn repeats(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, block) in blocks(text) {
        if let Some(first) = seen.insert(block.clone(), line) {
            found.push(format!("the block at line {line} repeats the one at line {first}"));
        }
    }
    // Any 3 consecutive non-blank lines seen twice (prose included).
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
    let mut windows: HashMap<String, usize> = HashMap::new();
    for w in lines.windows(3) {
        let key = w.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
        if let Some(first) = windows.insert(key, w[0].0) {
            found.push(format!("lines {}..{} repeat lines {first}..", w[0].0, w[2].0));
        }
    }
    found
}

#[test]
fn readme_repeats_no_block_table_or_run_of_lines() {
    let text = std::fs::read_to_string(util::repo_root().join("README.md")).unwrap();
    let found = repeats(&text);
    assert!(found.is_empty(), "README.md repeats itself:\n{}", found.join("\n"));
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
