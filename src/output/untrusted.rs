//! Text kvmprov did not write (a guest's console and SSH output, cloud-init's messages, an image
//! host's labels) made safe to show on a terminal, in a log or in JSON: the one sanitizer, used
//! where such text enters and again where the printer writes it (action lines, diagnostics,
//! every string of a JSON document); it is idempotent, so the second pass changes nothing clean.
//!
//! `strip-ansi-escapes` removes whole escape sequences (colours, cursor moves, window titles,
//! screen clears) and most lone C0 controls, but not all control characters (DEL, C1 codes
//! outside a sequence; and Unicode's bidirectional and invisible format characters are no
//! escapes at all): what remains is escaped as `\x7f`/`\u{202e}`, visible and inert. It also
//! drops tabs, so tabs are kept by stripping the text between them.

/// `text` without escape sequences and with every other control character escaped, except a
/// newline and a tab when `lines` (a console tail, a command's output); a carriage return is
/// dropped (serial consoles end lines with CR LF; a lone CR would let a line overwrite what a
/// person reads before it). Bidirectional formatting characters are escaped too (they reorder
/// what is shown), and so are invisible ones (they hide text, or make two names look alike).
pub fn sanitize(text: &str, lines: bool) -> String {
    let stripped = text
        .split('\t')
        .map(strip_ansi_escapes::strip_str)
        .collect::<Vec<_>>()
        .join("\t");
    let mut out = String::with_capacity(stripped.len());
    for c in stripped.chars() {
        match c {
            '\n' | '\t' if lines => out.push(c),
            '\r' => {}
            c if (c as u32) < 0x100 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() || is_bidi_control(c) || is_invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Unicode's explicit bidirectional formatting characters (UAX #9).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Format characters that show as nothing: the soft hyphen, the zero-width space, joiners and
/// word joiner, invisible operators, deprecated format controls, the byte-order mark,
/// interlinear annotation marks and tag characters (which can carry a hidden ASCII copy of any
/// text); and the line and paragraph separators, which break a line where no newline is seen.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00ad}' | '\u{180e}' | '\u{200b}'..='\u{200d}' | '\u{2028}' | '\u{2029}' | '\u{2060}'..='\u{2064}' | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}' | '\u{e0000}'..='\u{e007f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_go_and_lone_controls_are_escaped() {
        // Window title (OSC), screen clear (CSI), colour, then controls outside any sequence.
        let guest = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m ok\r\nbell\x07 back\x08 del\x7f \u{202e}rtl\tend\x1b";
        let shown = sanitize(guest, true);
        assert_eq!(shown, "red ok\nbell back del\\x7f \\u{202e}rtl\tend");
        assert!(!shown
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'));
        assert_eq!(sanitize("a\nb\tc", false), "a\\x0ab\\x09c");
        // Idempotent: what is shown once is shown the same again.
        let once = sanitize(guest, true);
        assert_eq!(sanitize(&once, true), once);
        assert_eq!(sanitize("plain ✓ text", false), "plain ✓ text");
    }

    #[test]
    fn regression_sanitize_let_zero_width_and_tag_characters_through() {
        assert_eq!(
            sanitize("ad\u{200b}min\u{feff} \u{e0041}\u{2028}x", false),
            "ad\\u{200b}min\\u{feff} \\u{e0041}\\u{2028}x"
        );
    }

    proptest::proptest! {
        #[test]
        fn nothing_but_newline_and_tab_survives(text in "(\\PC|[\\x00-\\x1f\\x7f-\\u{9f}\\u{202a}-\\u{202e}\\u{200b}-\\u{200d}\\u{2060}-\\u{2064}\\u{feff}\\u{e0000}-\\u{e007f}]){0,64}") {
            let hidden = |c: char| is_bidi_control(c) || is_invisible(c);
            let lines = sanitize(&text, true);
            proptest::prop_assert!(!lines.chars().any(|c| (c.is_control() && c != '\n' && c != '\t') || hidden(c)), "{lines:?}");
            let one = sanitize(&text, false);
            proptest::prop_assert!(!one.chars().any(|c| c.is_control() || hidden(c)), "{one:?}");
        }
    }
}
