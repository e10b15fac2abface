//! `docs/guide.md` shows its program once (section 2) and repeats it, hidden
//! (`# ` lines), in the block of section 4 that runs it. The doctests compile
//! and run both (`GuideDoctests` in `lib.rs`); this test keeps the hidden
//! copy the same program as the one the guide shows.

/// The Rust blocks of the guide, in order: (info string, lines).
fn rust_blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.to_owned(), Vec::new())),
            (Some(_), Some(_)) => {
                let block = current.take().expect("open block");
                if block.0.starts_with("rust") {
                    blocks.push(block);
                }
            }
            (Some((_, lines)), None) => lines.push(line.to_owned()),
            (None, None) => {}
        }
    }
    blocks
}

/// The code of `lines` without comments, blank lines and `fn main`, with
/// hidden lines shown.
fn code(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines {
        let line = match line.strip_prefix("# ") {
            Some(hidden) => hidden,
            None if line == "#" => "",
            None => line,
        };
        if line.starts_with("fn main") {
            break;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue;
        }
        out.push(line.to_owned());
    }
    out
}

#[test]
fn the_tested_copy_of_the_guides_program_is_the_program_it_shows() {
    let guide = include_str!("../../../docs/guide.md");
    let blocks = rust_blocks(guide);
    let program = blocks
        .iter()
        .find(|(info, lines)| {
            info == "rust,no_run" && lines.iter().any(|l| l.starts_with("fn main"))
        })
        .expect("the guide's main.rs block");
    let tested = blocks
        .iter()
        .find(|(_, lines)| lines.iter().any(|l| l.contains("run_from(")))
        .expect("the guide's block that runs the program");
    let hidden: Vec<String> = tested
        .1
        .iter()
        .filter(|l| l.starts_with('#'))
        .cloned()
        .collect();
    let shown = code(&program.1);
    let copy = code(&hidden);
    for (i, (a, b)) in shown.iter().zip(&copy).enumerate() {
        assert_eq!(
            a,
            b,
            "line {} of the program's code differs in the tested copy",
            i + 1
        );
    }
    assert_eq!(
        shown.len(),
        copy.len(),
        "the tested copy has another length"
    );
}
