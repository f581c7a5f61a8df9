//! The seed warns that unpinned installs make cloud builds (no layer cache)
//! change silently from one build to the next. Before building, the
//! Dockerfile is linted for the usual culprits; each finding is recorded
//! with the build's outcome (file, line, rule) and never fails the build.
//! Pure: text in, findings out.

use serde::{Deserialize, Serialize};

/// One unpinned thing in a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub line: usize,
    pub rule: &'static str,
    pub message: String,
}

/// Lints `dockerfile`; `has_npm_lockfile` says whether the build context has
/// a `package-lock.json` or `npm-shrinkwrap.json` at its root.
pub fn lint(dockerfile: &str, has_npm_lockfile: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    for (line, instruction) in instructions(dockerfile) {
        let (keyword, rest) = instruction.split_once(char::is_whitespace).unwrap_or((&instruction, ""));
        match keyword.to_ascii_uppercase().as_str() {
            "FROM" => {
                let mut words = rest.split_whitespace().filter(|w| !w.starts_with("--"));
                let image = words.next().unwrap_or_default().to_string();
                if let Some(message) = unpinned_base(&image, &stages) {
                    findings.push(Finding { line, rule: "from-unpinned", message });
                }
                if let (Some(kw), Some(name)) = (words.next(), words.next()) {
                    if kw.eq_ignore_ascii_case("as") {
                        stages.push(name.to_ascii_lowercase());
                    }
                }
            }
            "RUN" => {
                for command in shell_commands(rest) {
                    findings.extend(run_findings(&command, has_npm_lockfile).into_iter().map(|(rule, message)| Finding {
                        line,
                        rule,
                        message,
                    }));
                }
            }
            _ => {}
        }
    }
    findings
}

/// The base images a Dockerfile builds FROM, in order: not `scratch`, not
/// an earlier build stage, not one named by a build argument.
pub fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut bases = Vec::new();
    for (_, instruction) in instructions(dockerfile) {
        let (keyword, rest) = instruction.split_once(char::is_whitespace).unwrap_or((&instruction, ""));
        if !keyword.eq_ignore_ascii_case("FROM") {
            continue;
        }
        let mut words = rest.split_whitespace().filter(|w| !w.starts_with("--"));
        let image = words.next().unwrap_or_default().to_string();
        if !(image.is_empty() || image == "scratch" || image.contains('$') || stages.contains(&image.to_ascii_lowercase())) {
            bases.push(image);
        }
        if let (Some(kw), Some(name)) = (words.next(), words.next()) {
            if kw.eq_ignore_ascii_case("as") {
                stages.push(name.to_ascii_lowercase());
            }
        }
    }
    bases
}

/// Instructions with their first line number, continuation lines joined,
/// comments and blank lines dropped.
fn instructions(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if current.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        let entry = current.get_or_insert_with(|| (n + 1, String::new()));
        entry.1.push(' ');
        entry.1.push_str(body);
        if !continues {
            out.extend(current.take().map(|(l, s)| (l, s.trim().to_string())));
        }
    }
    out.extend(current.map(|(l, s)| (l, s.trim().to_string())));
    out
}

fn unpinned_base(image: &str, stages: &[String]) -> Option<String> {
    if image.is_empty() || image == "scratch" || image.contains('@') || image.contains('$') {
        return None;
    }
    if stages.contains(&image.to_ascii_lowercase()) {
        return None;
    }
    // A tag is after the last ':' that comes after the last '/' (a registry
    // may have a port: `host:5000/app`).
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].split_once(':') {
        None => Some(format!("FROM {image} has no tag or digest: the base image changes under you; pin a tag or @sha256 digest")),
        Some((_, "latest")) => Some(format!("FROM {image} follows `latest`; pin a version tag or @sha256 digest")),
        Some(_) => None,
    }
}

/// A RUN line's shell commands, split at `&&`, `||`, `;` and `|`.
fn shell_commands(run: &str) -> Vec<Vec<String>> {
    let run = run.trim();
    if run.starts_with('[') {
        // Exec form: one command, JSON array of words.
        let words: Vec<String> = serde_json::from_str(run).unwrap_or_default();
        return vec![words];
    }
    run.split("&&")
        .flat_map(|s| s.split("||"))
        .flat_map(|s| s.split(';'))
        .flat_map(|s| s.split('|'))
        .map(|c| c.split_whitespace().map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_string()).collect())
        .filter(|c: &Vec<String>| !c.is_empty())
        .collect()
}

fn run_findings(words: &[String], has_npm_lockfile: bool) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    // Skip `sudo`, `env X=Y` and assignments before the program.
    let start = words.iter().position(|w| w != "sudo" && w != "env" && !w.contains('=')).unwrap_or(words.len());
    let words = &words[start..];
    let Some(program) = words.first().map(|w| w.rsplit('/').next().unwrap_or(w)) else { return out };
    let args = &words[1..];
    let sub = args.iter().find(|a| !a.starts_with('-')).map(String::as_str);
    match (program, sub) {
        ("apt-get" | "apt", Some("install")) => {
            for package in operands(args, "install", &[]) {
                if !package.contains('=') {
                    out.push(("apt-unpinned", format!("apt-get install {package} without =VERSION installs whatever is newest")));
                }
            }
        }
        ("apt-get" | "apt", Some(s @ ("upgrade" | "dist-upgrade" | "full-upgrade"))) => {
            out.push(("apt-upgrade", format!("apt-get {s} upgrades every package to whatever is newest at build time")));
        }
        ("pip" | "pip3", Some("install")) => pip(args, &mut out),
        ("python" | "python3", _) if args.len() > 2 && args[0] == "-m" && args[1] == "pip" => pip(&args[2..], &mut out),
        ("npm", Some("install" | "i")) if !has_npm_lockfile => {
            out.push((
                "npm-no-lockfile",
                "npm install without a package-lock.json resolves versions at build time; commit a lockfile and use npm ci".into(),
            ));
        }
        _ => {}
    }
    out
}

fn pip(args: &[String], out: &mut Vec<(&'static str, String)>) {
    if args.first().map(String::as_str) != Some("install") && !args.iter().any(|a| a == "install") {
        return;
    }
    for package in operands(
        args,
        "install",
        &[
            "-r",
            "--requirement",
            "-c",
            "--constraint",
            "-e",
            "--editable",
            "-i",
            "--index-url",
            "--extra-index-url",
            "-f",
            "--find-links",
            "--target",
            "-t",
            "--prefix",
            "--root",
        ],
    ) {
        if package.starts_with('.') || package.starts_with('/') || package.contains("://") {
            continue;
        }
        if !package.contains("==") && !package.contains("===") {
            out.push(("pip-unpinned", format!("pip install {package} without ==VERSION installs whatever is newest")));
        }
    }
}

/// The operands after `verb`: words not starting with '-', skipping the
/// value of each option in `with_value`.
fn operands<'a>(args: &'a [String], verb: &str, with_value: &[&str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut seen_verb = false;
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if !seen_verb {
            seen_verb = a == verb;
            continue;
        }
        if with_value.contains(&a.as_str()) {
            skip_next = true;
        } else if !a.starts_with('-') {
            out.push(a.as_str());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(dockerfile: &str) -> Vec<(usize, &'static str)> {
        lint(dockerfile, false).into_iter().map(|f| (f.line, f.rule)).collect()
    }

    #[test]
    fn from_needs_a_tag_or_digest_and_not_latest() {
        assert_eq!(rules("FROM debian\n"), vec![(1, "from-unpinned")]);
        assert_eq!(rules("# base\nFROM debian:latest\n"), vec![(2, "from-unpinned")]);
        assert_eq!(rules("FROM --platform=linux/amd64 python AS build\n"), vec![(1, "from-unpinned")]);
        assert!(rules("FROM debian:12.5\nFROM python@sha256:abc\nFROM scratch\nFROM host:5000/app:1.0\n").is_empty());
        assert_eq!(rules("FROM host:5000/app\n"), vec![(1, "from-unpinned")]);
        assert!(rules("FROM node:20 AS deps\nFROM deps\n").is_empty(), "a build stage is not a base image");
    }

    #[test]
    fn apt_installs_need_versions_and_upgrades_are_flagged() {
        let f =
            lint("FROM debian:12\nRUN apt-get update && \\\n    apt-get install -y --no-install-recommends curl git=1:2.39.2-1\n", false);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].line, f[0].rule), (2, "apt-unpinned"));
        assert!(f[0].message.contains("curl"));
        assert!(rules("FROM debian:12\nRUN apt-get install -y curl=7.88.1-10\n").is_empty());
        assert_eq!(rules("FROM debian:12\nRUN apt-get update; apt-get -y dist-upgrade\n"), vec![(2, "apt-upgrade")]);
        assert_eq!(rules("FROM debian:12\nRUN apt upgrade -y\n"), vec![(2, "apt-upgrade")]);
    }

    #[test]
    fn pip_installs_need_exact_versions_unless_from_a_requirements_file() {
        assert_eq!(rules("FROM python:3.12\nRUN pip install flask\n"), vec![(2, "pip-unpinned")]);
        assert_eq!(rules("FROM python:3.12\nRUN python3 -m pip install 'flask>=2'\n"), vec![(2, "pip-unpinned")]);
        assert!(rules("FROM python:3.12\nRUN pip install flask==3.0.3 -r requirements.txt .\n").is_empty());
        assert!(rules("FROM python:3.12\nRUN pip install --no-cache-dir -r requirements.txt\n").is_empty());
    }

    #[test]
    fn base_images_skip_scratch_stages_and_arguments() {
        let df = "ARG V=1\nFROM node:20 AS deps\nFROM scratch\nFROM deps\nFROM --platform=x python:$V\nFROM debian:12\n";
        assert_eq!(base_images(df), vec!["node:20".to_string(), "debian:12".to_string()]);
    }

    #[test]
    fn npm_install_needs_a_lockfile_and_npm_ci_is_fine() {
        assert_eq!(rules("FROM node:20\nRUN npm install\n"), vec![(2, "npm-no-lockfile")]);
        assert!(lint("FROM node:20\nRUN npm install\n", true).is_empty());
        assert!(rules("FROM node:20\nRUN npm ci\n").is_empty());
    }

    #[test]
    fn exec_form_and_comments_inside_continuations_are_understood() {
        assert_eq!(rules("FROM debian:12\nRUN [\"apt-get\", \"install\", \"-y\", \"curl\"]\n"), vec![(2, "apt-unpinned")]);
        assert!(rules("FROM debian:12\nRUN apt-get update \\\n# a comment\n && echo ok\n").is_empty());
    }
}
