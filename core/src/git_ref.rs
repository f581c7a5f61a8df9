//! Whether a text can name a Git ref (a branch, a tag or a commit), checked
//! when a deployment is requested, so that a ref no repository could hold
//! is refused there (a 400, exit status 2) rather than failing the
//! deployment's first step. The rules are Git's own for ref names
//! (`git check-ref-format`), which commit ids and `HEAD` meet too.

/// Why `text` cannot be a Git ref, or `None` if it can.
pub fn problem(text: &str) -> Option<&'static str> {
    if text.trim().is_empty() {
        return Some("it is empty");
    }
    if text.starts_with('-') {
        return Some("it starts with `-`, like an option");
    }
    if text.chars().any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c)) {
        return Some("it holds a space, a control character or one of ~ ^ : ? * [ \\");
    }
    if text.contains("..") || text.contains("@{") || text.contains("//") {
        return Some("it holds `..`, `@{` or `//`");
    }
    if text.starts_with('/') || text.ends_with('/') || text.ends_with('.') || text == "@" {
        return Some("it starts or ends with `/`, ends with `.`, or is `@`");
    }
    if text.split('/').any(|part| part.starts_with('.') || part.ends_with(".lock")) {
        return Some("a part of it starts with `.` or ends with `.lock`");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn branches_tags_commits_and_head_are_refs_and_paths_are_not() {
        for fine in ["main", "HEAD", "v1.2.0", "feature/login-form", "refs/heads/main", "0190c3e2a7b4", "release-2026.12"] {
            assert_eq!(problem(fine), None, "{fine}");
        }
        for (bad, why) in [
            ("../../etc", "`..`"),
            (" ", "empty"),
            ("--upload-pack=x", "option"),
            ("a b", "space"),
            ("main~1", "~"),
            ("x@{1}", "`@{`"),
            ("/abs", "starts or ends"),
            ("dir/", "starts or ends"),
            ("topic.", "starts or ends"),
            ("a/.hidden", "starts with `.`"),
            ("x.lock", ".lock"),
        ] {
            let said = problem(bad).unwrap_or_else(|| panic!("`{bad}` taken"));
            assert!(said.contains(why), "{bad}: {said}");
        }
    }
}
