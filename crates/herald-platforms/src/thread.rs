//! Splitting long text into a thread, for platforms that take replies.
//!
//! Parts break at the last paragraph, sentence or word boundary that fits, measured with the
//! platform's own counting rule; a word longer than a whole part is cut at a grapheme boundary.
//! With numbering, each part ends in ` (i/n)`, and the numbering's width is part of the budget.

use herald_core::platforms::Counting;
use unicode_segmentation::UnicodeSegmentation;

/// Splits `text` into parts of at most `max` units. Text that fits is one part.
pub fn split(text: &str, max: usize, counting: Counting, numbering: bool) -> Vec<String> {
    let text = text.trim();
    if counting.count(text) <= max || max == 0 {
        return vec![text.to_string()];
    }
    // The suffix width depends on the part count, which depends on the suffix width: grow the
    // guess until it holds (it settles in a step or two).
    let mut guess = 9;
    loop {
        let suffix = if numbering { format!(" ({guess}/{guess})").chars().count() } else { 0 };
        let budget = max.saturating_sub(suffix).max(1);
        let parts = greedy(text, budget, counting);
        if !numbering {
            return parts;
        }
        if parts.len() <= guess {
            let n = parts.len();
            return parts.into_iter().enumerate().map(|(i, p)| format!("{p} ({}/{n})", i + 1)).collect();
        }
        guess = guess * 10 + 9;
    }
}

fn greedy(text: &str, budget: usize, counting: Counting) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if counting.count(rest) <= budget {
            parts.push(rest.to_string());
            break;
        }
        let cut = best_cut(rest, budget, counting);
        let (head, tail) = rest.split_at(cut);
        parts.push(head.trim_end().to_string());
        rest = tail.trim_start();
    }
    parts
}

/// The byte offset to cut `text` at so the head fits `budget`: the last paragraph break, else
/// the last sentence end, else the last space, else the last grapheme that fits.
fn best_cut(text: &str, budget: usize, counting: Counting) -> usize {
    // The longest prefix (in graphemes) that fits.
    let mut fit = 0;
    for (i, g) in text.grapheme_indices(true) {
        let end = i + g.len();
        if counting.count(&text[..end]) > budget {
            break;
        }
        fit = end;
    }
    if fit == 0 {
        // Not even one grapheme fits (a URL weighing more than the budget): take one anyway.
        return text.graphemes(true).next().map_or(text.len(), |g| g.len());
    }
    let head = &text[..fit];
    let at_least = fit / 3; // do not make a tiny part just to break at a nicer place
    if let Some(i) = head.rfind("\n\n").filter(|&i| i > at_least) {
        return i;
    }
    if let Some(i) = sentence_end(head).filter(|&i| i > at_least) {
        return i;
    }
    if fit < text.len()
        && let Some(i) = head.rfind(char::is_whitespace).filter(|&i| i > 0)
    {
        // A cut that would split a word moves back to the space before it, unless the word
        // itself is longer than a part.
        let next_is_space = text[fit..].starts_with(char::is_whitespace);
        return if next_is_space { fit } else { i };
    }
    fit
}

fn sentence_end(head: &str) -> Option<usize> {
    let bytes = head.as_bytes();
    (1..bytes.len()).rev().find(|&i| bytes[i].is_ascii_whitespace() && matches!(bytes[i - 1], b'.' | b'!' | b'?'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split("hello", 10, Counting::Chars, true), vec!["hello"]);
    }

    #[test]
    fn parts_fit_and_keep_every_word() {
        let text = "one two three four five six seven eight nine ten eleven twelve";
        let parts = split(text, 20, Counting::Chars, false);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.chars().count() <= 20), "{parts:?}");
        assert_eq!(parts.join(" "), text);
    }

    #[test]
    fn numbering_fits_inside_the_limit() {
        let text = "word ".repeat(200);
        let parts = split(&text, 50, Counting::Chars, true);
        let n = parts.len();
        assert!(n > 10);
        for (i, p) in parts.iter().enumerate() {
            assert!(p.chars().count() <= 50, "{p}");
            assert!(p.ends_with(&format!(" ({}/{n})", i + 1)), "{p}");
        }
    }

    #[test]
    fn prefers_sentence_and_paragraph_breaks() {
        let text = "First sentence here. Second one is a bit longer than that.\n\nNew paragraph.";
        let parts = split(text, 40, Counting::Chars, false);
        assert_eq!(parts[0], "First sentence here.");
    }

    #[test]
    fn counts_graphemes_for_bluesky() {
        let family = "👨‍👩‍👧‍👦";
        let text = format!("{} end", family.repeat(6));
        let parts = split(&text, 5, Counting::Graphemes, false);
        assert!(parts.iter().all(|p| Counting::Graphemes.count(p) <= 5), "{parts:?}");
        assert!(
            parts.iter().all(|p| p.chars().count() % 7 == 0 || p.contains("end")),
            "a family emoji was cut: {parts:?}"
        );
    }

    #[test]
    fn a_word_longer_than_a_part_is_cut() {
        let parts = split(&"x".repeat(25), 10, Counting::Chars, false);
        assert_eq!(parts, vec!["x".repeat(10), "x".repeat(10), "x".repeat(5)]);
    }
}
