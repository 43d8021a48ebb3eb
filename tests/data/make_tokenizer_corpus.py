"""Write tests/data/tokenizer_corpus.txt, the tokenizer parity corpus (deterministic).

    python tests/data/make_tokenizer_corpus.py

One sample per line. Samples may hold newlines, tabs and other control characters, written as
escapes that `decode_line` expands: \\n \\t \\r \\v \\f \\\\ and \\u{HEX} for any code point.
Everything else is literal UTF-8.

The samples are real-looking text of many kinds: English prose, Python/C/JS/Rust/SQL/shell code
with its indentation, JSON and YAML, Markdown and HTML, Korean, Chinese, Japanese, Arabic, Hebrew,
Russian, Greek, Hindi, Thai, Vietnamese and more, emoji (ZWJ sequences, skin tones, flags,
keycaps, Unicode 15 additions), combining marks, runs of spaces, tabs and newlines, odd Unicode
whitespace, long numbers, URLs and e-mail addresses, and chat transcripts with special tokens
written inline (`<|user|>`, `<|end|>`, `<|im_start|>`, `<s>`, ...), well-formed and broken.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).with_name("tokenizer_corpus.txt")

_ESC = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "\\": "\\"}


def decode_line(line: str) -> str:
    """Expand the escapes of one corpus line."""

    def repl(m: re.Match) -> str:
        if m.group(1):
            return chr(int(m.group(1), 16))
        return _ESC[m.group(2)]

    return re.sub(r"\\(?:u\{([0-9A-Fa-f]+)\}|([ntrvf\\]))", repl, line)


def encode_line(text: str) -> str:
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\v":
            out.append("\\v")
        elif ch == "\f":
            out.append("\\f")
        elif ord(ch) < 0x20 or ch in "\x85\u2028\u2029\x7f":
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return "".join(out)


# ----- content -------------------------------------------------------------------------------

ENGLISH = """\
The quick brown fox jumps over the lazy dog.
It was the best of times, it was the worst of times, it was the age of wisdom.
Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about a little.
Rain is expected to spread from the west overnight, clearing by mid-morning on Tuesday.
The committee's report, published on 14 March 2023, recommends a phased rollout over three years.
"I don't know," she said, "but I'm sure we'll find out soon enough."
Please don't hesitate to reach out if you've got any questions about the invoice.
Wasn't it Dr. Johnson who said that when a man is tired of London, he is tired of life?
The mitochondria is often described as the powerhouse of the cell, though that's a simplification.
Our Q3 revenue grew 12.5% year over year, driven mainly by subscription renewals in EMEA.
To reset your password, click "Forgot password?" on the sign-in page and follow the instructions.
The recipe calls for 2 cups of flour, 1/2 teaspoon of salt, and 3 tablespoons of unsalted butter.
He'd've come earlier if the train hadn't been delayed by forty-five minutes at Crewe.
Shakespeare wrote approximately 39 plays, 154 sonnets, and a variety of other poems.
Turn left at the second roundabout, then continue for about 800 m until you see the church.
The API returns HTTP 429 (Too Many Requests) when the client exceeds 100 requests per minute.
I can't believe it's already December — where did the year go?!
Note: the warranty doesn't cover damage caused by water, fire, or unauthorized repairs.
In 1969, Apollo 11 landed on the Moon; Neil Armstrong stepped onto the surface at 02:56 UTC.
Photosynthesis converts light energy into chemical energy stored in glucose molecules.
Well... that's one way to look at it, I suppose.
THE END OF THE WORLD AS WE KNOW IT (AND I FEEL FINE)
Mr. and Mrs. O'Brien's daughter—a talented violinist—won the regional competition last spring.
Type 'yes' to confirm, or 'no' to cancel the operation.
The U.S.A., the U.K., and the E.U. signed the agreement in Geneva on Friday.
Small language models can run comfortably on a laptop CPU with 4-bit quantization.
She sells sea shells by the sea shore; the shells she sells are surely sea shells.
Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune...
You'll need Python 3.10+ and at least 8 GB of RAM to follow along with this tutorial.
Over 70 percent of Earth's surface is covered by water, most of it in the oceans.
The meeting has been moved from 3:30 p.m. to 4:15 p.m. because of a scheduling conflict.
Honestly? I think the sequel was better than the original, but don't tell anyone.
A stitch in time saves nine, or so my grandmother always used to say.
Each participant received a $25 gift card upon completing the 20-minute survey.
The bridge, which opened in 1937, spans 1,280 metres across the Golden Gate strait.
We'll be closed on Monday for the bank holiday; normal hours resume on Tuesday at 9am.
According to the manual, the device should be charged for at least 6 hours before first use.
"Is anyone there?" whispered the child, peering into the darkness of the old barn.
The algorithm's time complexity is O(n log n) in the average case and O(n^2) in the worst case.
I've been working on this project since '98, and it still surprises me sometimes.
Nobody expects the Spanish Inquisition! Our chief weapon is surprise... surprise and fear.
Flight BA287 to San Francisco is now boarding at gate 23.
Don't panic. Always know where your towel is.
There are only 10 kinds of people: those who understand binary and those who don't.
The museum's collection includes over 8 million objects spanning 5,000 years of history.
Temperatures will reach a high of 31°C (88°F) this afternoon, with humidity around 65%.
If at first you don't succeed, try, try again.
Let's grab coffee sometime next week—does Wednesday or Thursday work better for you?
All human beings are born free and equal in dignity and rights.
The library's opening hours are Mon–Fri 08:00–20:00 and Sat 10:00–16:00.
Be sure to back up your data before upgrading the firmware to version 2.4.1.
Several studies have shown that regular exercise improves both mood and sleep quality.
I'M NOT SHOUTING, THE CAPS LOCK KEY IS STUCK.
Y'all're gonna love this place; it's got the best barbecue in the county.
He paused, then added: 'Whatever you do, don't open the third door.'
The results (see Table 2) suggest a strong correlation between the two variables (r = 0.87).
"""

ENGLISH_SUBJECTS = ["The new library", "My neighbour's dog", "The research team", "Our startup",
                    "The city council", "A small bakery in Lyon", "The old lighthouse keeper",
                    "The support engineer", "Her youngest brother", "The orchestra", "This compiler",
                    "The weather service", "An anonymous donor", "The quarterly report",
                    "Every student in the class", "The night train to Vienna"]
ENGLISH_VERBS = ["announced", "quietly finished", "refused to discuss", "completely redesigned",
                 "spent three weeks analysing", "accidentally deleted", "will soon publish",
                 "has been testing", "couldn't explain", "proudly presented", "carefully reviewed",
                 "postponed"]
ENGLISH_OBJECTS = ["the proposal for a new bicycle lane", "a 240-page report on coastal erosion",
                   "its plans for the winter season", "the results of last year's experiment",
                   "a surprisingly good apple pie", "the source code of the payment module",
                   "the schedule for the spring concerts", "an exhibition of early photography",
                   "the budget for 2025", "two dozen hand-painted postcards",
                   "the instructions in the user's guide", "the missing chapter of the novel"]
ENGLISH_TAILS = [".", " yesterday.", " on Thursday evening.", ", much to everyone's surprise.",
                 " after months of delay.", " — or so the rumour goes.", "!", "?",
                 " (details below).", "; nobody knows why.", " at 10:45 sharp.", "..."]

PYTHON = '''\
def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    result = [0, 1]
    while len(result) < n:
        result.append(result[-1] + result[-2])
    return result[:n]
###
class LRUCache:
    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self._data: dict[str, bytes] = {}

    def get(self, key):
        if key not in self._data:
            return None
        value = self._data.pop(key)
        self._data[key] = value  # move to the end
        return value
###
import os, sys
from pathlib import Path

for path in sorted(Path(".").rglob("*.py")):
    if path.stat().st_size > 1_000_000:
        print(f"{path}: {path.stat().st_size:,} bytes", file=sys.stderr)
###
@dataclass(frozen=True)
class Point:
    x: float = 0.0
    y: float = 0.0

    def __add__(self, other: "Point") -> "Point":
        return Point(self.x + other.x, self.y + other.y)
###
try:
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
except (OSError, json.JSONDecodeError) as exc:
    logger.error("could not read %s: %s", config_path, exc)
    raise SystemExit(1) from exc
###
async def fetch_all(urls):
\tasync with aiohttp.ClientSession() as session:
\t\ttasks = [session.get(u) for u in urls]
\t\treturn await asyncio.gather(*tasks, return_exceptions=True)
###
matrix = [[1, 2, 3],
          [4, 5, 6],
          [7, 8, 9]]
transposed = list(map(list, zip(*matrix)))
assert transposed[0] == [1, 4, 7], transposed
###
if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Count words in files.")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    print(sum(len(open(f).read().split()) for f in args.files))
###
lambda x: x**2 if x >= 0 else -x ** 0.5
###
squares = {k: v for k, v in zip("abcdef", range(6)) if v % 2 == 0}
###
print("Hello, world!\\n", end="")
###
regex = re.compile(r"^(?P<user>[\\w.+-]+)@(?P<host>[\\w-]+\\.[\\w.-]+)$")
'''

C_CODE = r'''#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE\n", argv[0]);
        return EXIT_FAILURE;
    }
    FILE *fp = fopen(argv[1], "rb");
    if (!fp) { perror("fopen"); return 1; }
    size_t n = 0;
    int c;
    while ((c = fgetc(fp)) != EOF) n += (c == '\n');
    printf("%zu lines\n", n);
    fclose(fp);
    return 0;
}
###
static inline uint32_t rotl32(uint32_t x, int r) {
	return (x << r) | (x >> (32 - r));
}
###
typedef struct node {
    struct node *next;
    void *payload;
} node_t;

#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))
###
for (int i = 0; i < n; ++i) {
        for (int j = 0; j < m; ++j) {
                out[i * m + j] = a[i] * b[j];   /* outer product */
        }
}
###
// TODO(alice): handle the EAGAIN case properly
ssize_t r = read(fd, buf, sizeof buf);
'''

OTHER_CODE = r'''fn main() {
    let words: Vec<&str> = "the quick brown fox".split_whitespace().collect();
    println!("{} words, longest = {:?}", words.len(), words.iter().max_by_key(|w| w.len()));
}
###
const debounce = (fn, ms = 250) => {
  let t;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn.apply(this, args), ms);
  };
};
###
SELECT u.id, u.email, COUNT(o.id) AS orders
FROM users u
LEFT JOIN orders o ON o.user_id = u.id
WHERE u.created_at >= '2024-01-01'
GROUP BY u.id, u.email
HAVING COUNT(o.id) > 3
ORDER BY orders DESC
LIMIT 50;
###
#!/usr/bin/env bash
set -euo pipefail
for f in *.log; do
  gzip -9 "$f" && echo "compressed $f"
done
tar -czf "backup-$(date +%Y%m%d).tar.gz" ./data 2>/dev/null || true
###
<!DOCTYPE html>
<html lang="en">
  <head><meta charset="utf-8"><title>Demo &amp; test</title></head>
  <body>
    <p class="note">Hello&nbsp;<b>world</b> &lt;3</p>
  </body>
</html>
###
package main

import "fmt"

func main() {
	ch := make(chan int, 3)
	go func() { for i := 0; i < 3; i++ { ch <- i * i }; close(ch) }()
	for v := range ch {
		fmt.Println(v)
	}
}
###
server:
  host: 0.0.0.0
  port: 8080
  tls:
    enabled: true
    cert: /etc/ssl/certs/server.pem
logging:
  level: debug   # one of: debug, info, warn, error
###
# Installation

1. Clone the repository: `git clone https://github.com/example/project.git`
2. Run `make install`
3. **Done!** See [the docs](https://example.org/docs/) for more.

| Option | Default | Description |
|--------|---------|-------------|
| `-v`   | off     | verbose     |
###
\begin{equation}
  E = mc^2, \quad \int_0^\infty e^{-x^2}\,dx = \frac{\sqrt{\pi}}{2}
\end{equation}
###
diff --git a/src/main.c b/src/main.c
index 3b18e51..a9c2f04 100644
--- a/src/main.c
+++ b/src/main.c
@@ -10,7 +10,7 @@ int main(void) {
-    int x = 0;
+    int x = 1;
     return x;
 }
'''

MULTILINGUAL = """\
안녕하세요! 오늘 날씨가 정말 좋네요.
저는 서울에서 태어났고 지금은 부산에 살고 있습니다.
이 문서는 2024년 3월 15일에 마지막으로 수정되었습니다.
한국어 형태소 분석은 생각보다 훨씬 어렵습니다.
회의는 오후 3시에 시작하니까 늦지 마세요.
대한민국의 수도는 서울특별시이며, 인구는 약 950만 명입니다.
밥 먹었어? 아직 안 먹었으면 같이 먹자.
我们明天早上九点在公司门口见面。
北京是中华人民共和国的首都，也是全国的政治和文化中心。
这个问题比我想象的要复杂得多，需要更多的时间来研究。
他说：“我从来没有去过上海，但是我很想去看看。”
人工智能正在改变我们的工作和生活方式。
請問洗手間在哪裡？謝謝！
春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。
今日は東京でとても暑い一日でした。
すみません、駅までの道を教えていただけますか？
私の趣味は読書と映画鑑賞です。
この製品の価格は税込みで３，９８０円です。
カタカナとひらがなと漢字が混ざった文章を書きます。
吾輩は猫である。名前はまだ無い。
ｶﾀｶﾅの半角文字もたまに使われます。
مرحبا بكم في موقعنا الإلكتروني.
اللغة العربية هي واحدة من أكثر اللغات انتشاراً في العالم.
تم تحديث هذه الصفحة في ١٥ مارس ٢٠٢٤.
أين أقرب محطة قطار من هنا؟
السلام عليكم ورحمة الله وبركاته
שלום, מה שלומך היום?
הפגישה נדחתה ליום רביעי בשעה 10:00.
Привет! Как дела? Давно не виделись.
Москва — столица России, крупнейший по численности населения город страны.
Съешь же ещё этих мягких французских булок, да выпей чаю.
Γεια σου κόσμε! Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.
नमस्ते, आप कैसे हैं? मैं ठीक हूँ, धन्यवाद।
भारत की राजधानी नई दिल्ली है।
สวัสดีครับ วันนี้อากาศดีมาก
ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ
Xin chào! Tôi tên là Nguyễn Văn An, rất vui được gặp bạn.
Tiếng Việt có sáu thanh điệu: ngang, huyền, sắc, hỏi, ngã, nặng.
Der Zug nach München fährt um 14:32 von Gleis 7 ab.
Größenwahn und Schadenfreude sind typisch deutsche Wörter, oder?
Où est la bibliothèque ? Je voudrais emprunter « Les Misérables ».
¿Dónde está la estación? ¡Muchas gracias por tu ayuda!
A ação foi concluída com sucesso às 18h30.
Dziękuję bardzo! Zażółć gęślą jaźń.
Türkçe öğrenmek sandığımdan daha kolaymış.
Ég tala smá íslensku en ekki mjög vel.
Բարև ձեզ, ինչպե՞ս եք։
გამარჯობა, როგორ ხარ?
Habari ya asubuhi! Karibu Tanzania.
ሰላም ነው? እንዴት ነህ?
ཀུན་ལ་བཀྲ་ཤིས་བདེ་ལེགས།
ᠮᠣᠩᠭᠣᠯ ᠪᠢᠴᠢᠭ
ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ
"""

EMOJI = [
    "Great job! 👍👍🏻👍🏼👍🏽👍🏾👍🏿",
    "Family: 👨‍👩‍👧‍👦 👩‍👩‍👦 👨‍👨‍👧‍👧 👪",
    "Coders: 👩🏽‍💻 👨🏿‍💻 🧑‍💻 🧑🏻‍🔬 👩‍🚀",
    "Flags: 🇰🇷 🇯🇵 🇨🇳 🇺🇸 🇬🇧 🇫🇷 🇩🇪 🇧🇷 🇺🇳 🏴󠁧󠁢󠁳󠁣󠁴󠁿 🏳️‍🌈 🏳️‍⚧️ 🏴‍☠️",
    "Keycaps: 1️⃣ 2️⃣ 3️⃣ #️⃣ *️⃣ 🔟",
    "Hearts ❤️🧡💛💚💙💜🖤🤍🤎❤️‍🔥❤️‍🩹 🩷🩵🩶",
    "New in Unicode 15: 🫨 🫷🏽 🫸🏿 🪼 🫎 🪿 🫚 🫛 🪭 🪮 🪇 🪈",
    "Weather today: ☀️ 🌤 ⛅ 🌧️ ⛈ ❄️ → 🌈",
    "Food 🍕🍔🌮🍣🍜🥟🍩☕️🫖",
    "Handshake 🫱🏻‍🫲🏿 and kiss 👩🏼‍❤️‍💋‍👨🏾",
    "Mixed 🦙.cpp 🐍 Python 🦀 Rust 🐹 Go",
    "Emoji with text presentation: ☺ ☺️ ✈ ✈️ ♥ ♥️",
    "🎉🎉🎉 Congratulations on your new job!!! 🎉🎉🎉",
    "😀😃😄😁😆😅🤣😂🙂🙃🫠😉😊😇",
    "Person shrugging 🤷‍♀️🤷🏻‍♂️🤷🏿",
    "Zodiac ♈♉♊♋♌♍♎♏♐♑♒♓",
    "Tag sequence 🏴󠁧󠁢󠁥󠁮󠁧󠁿 (England) and 🏴󠁧󠁢󠁷󠁬󠁳󠁿 (Wales)",
]

COMBINING = [
    "e\u0301 vs é (decomposed vs precomposed)",
    "Cafe\u0301 au lait and cafe\u0301 noir",
    "Z\u0335\u0321a\u0336\u0322l\u0334\u0327g\u0337o\u0338\u0328 text is fun",
    "n\u0303 o\u0308 u\u0308 a\u030a c\u0327",
    "\u1112\u1161\u11ab\u1100\u1173\u11af (decomposed Hangul jamo)",
    "Ti\u00ea\u0301ng Vi\u00ea\u0323t (mixed combining)",
    "Devanagari: क्षत्रिय, ज्ञान, श्री",
    "Thai with marks: กิ่ง น้ำ ที่",
    "Arabic with harakat: بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ",
    "Hebrew with niqqud: בְּרֵאשִׁית בָּרָא",
    "a\u0300\u0301\u0302\u0303\u0304\u0305\u0306\u0307\u0308 stacked",
    "\u0301 leading combining mark",
    "IPA: ˈfəʊnətɪk trænˈskrɪpʃən",
    "Math: ∀x∈ℝ, ∃y: x² + y² ≥ 0 ∧ ∑ᵢ aᵢ = ∞",
    "Symbols: © ® ™ § ¶ † ‡ • … ‰ ′ ″ ‹ › « » ¿ ¡",
    "Currency: $100 €85 £72 ¥11,000 ₩130,000 ₹8,300 ₿0.0021",
    "Arrows ← ↑ → ↓ ↔ ⇒ ⇔ ⟶ and boxes ┌─┐│└┘",
    "Fullwidth: ＡＢＣ１２３！？",
    "Superscripts x² y³ and fractions ½ ¼ ¾ ⅓",
    "Roman numerals Ⅰ Ⅱ Ⅲ Ⅳ Ⅻ and circled ① ② ③",
    "Unicode 15.1 CJK extension I: \U0002EBF0\U0002EBF1\U0002EBF2 and ext H: \U00031350\U00031351",
    "Kannada \u0cf3 and Lao \u0ece added in Unicode 15",
    "Private use \ue000\ue001 and unassigned \u0378\u0379 code points",
    "Zero width: a\u200bb c\u200cd e\u200df word\u2060joiner \ufeffBOM",
    "Right-to-left mark \u200fשלום\u200e and isolate \u2067abc\u2069",
    "Variation selectors: 葛\U000E0100 and ︎✔︎ vs ✔️",
    "Mathematical alphanumerics: \U0001D400\U0001D401\U0001D402 \U0001D7CE\U0001D7CF",
    "Ligatures ﬁ ﬂ ﬀ and Ǆ ǅ ǆ",
    "Long s ſ and Kelvin sign K and Ångström sign Å",
    "Dotted İ and dotless ı in Istanbul / İstanbul",
]

WHITESPACE = [
    "word\tword\t\tword",
    "\tindented with a tab",
    "\t\t\tthree tabs then text",
    "two  spaces   three    four     five",
    "trailing spaces   ",
    "   leading spaces",
    " single leading space",
    "line one\nline two\n\nline four",
    "\n\n\nthree leading newlines",
    "ends with newlines\n\n",
    "windows\r\nline\r\nendings\r\n",
    "old mac\rline endings",
    "mixed \t \n \r\n  \t\t  whitespace",
    "vertical\vtab and form\ffeed",
    "non\u00a0breaking\u00a0space and narrow\u202fno-break",
    "ideographic\u3000space　全角スペース",
    "em\u2003space en\u2002space thin\u2009space hair\u200aspace",
    "next line\u0085character and line\u2028separator and para\u2029separator",
    "ogham\u1680space mark",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n\n\n\n",
    " \n \n ",
    "a" + " " * 40 + "b",
    "x" + "\t" * 12 + "y",
    "end" + " " * 17,
    "        eight-space indent",
    "                sixteen-space indent",
    "\n    indented after newline\n        deeper\n    back",
    " \t \t mixed indent",
    "text\n \ntext",
    "a\n\n\n\n\n\n\n\n\n\nb",
    "\u3000\u3000全角インデント",
]

NUMBERS = [
    "3.14159265358979323846264338327950288419716939937510",
    "1234567890123456789012345678901234567890",
    "The population was 8,336,817 in 2020 (up 7.7% from 8,175,133).",
    "Pi is approximately 3.14159, e is 2.71828, and phi is 1.61803.",
    "Call +1 (555) 010-4477 or +44 20 7946 0958.",
    "0xDEADBEEF 0b1011_0110 0o755 1e-9 6.022e23 -273.15",
    "Order #A-20240315-00042 totals €1.299,95 (VAT incl.).",
    "ISBN 978-3-16-148410-0, DOI 10.1000/182",
    "Version 1.2.3-rc.4+build.5678 released 2024-06-30T12:34:56Z",
    "IPv4 192.168.0.1/24, IPv6 2001:0db8:85a3::8a2e:0370:7334",
    "١٢٣٤٥٦٧٨٩٠ and ۱۲۳۴۵۶۷۸۹۰ and ०१२३४५६७८९",
    "１２３４５６７８９０ full-width digits",
    "Coordinates: 37°46′29″N 122°25′09″W",
    "000000000000000000000000000000001",
    "99 bottles, 98 bottles, 97 bottles...",
    "12:00 12:30 13:00 13:30 14:00",
    "$1,000,000.00 is one million dollars",
    "1st 2nd 3rd 4th 21st 22nd 101st",
    "2^64 = 18446744073709551616",
    "Credit card: 4111 1111 1111 1111, exp 12/29, CVV 123",
]

URLS = [
    "https://www.example.com/path/to/page?query=value&lang=en#section-2",
    "Visit http://localhost:8080/api/v1/users/42 for the JSON.",
    "ftp://ftp.example.org/pub/releases/v2.0/archive.tar.gz",
    "Email me at jane.doe+newsletter@example.co.uk or ops@sub.example.com.",
    "https://ko.wikipedia.org/wiki/대한민국 and https://zh.wikipedia.org/wiki/北京",
    "https://example.com/%E4%BD%A0%E5%A5%BD?q=a%20b&x=%F0%9F%98%80",
    "git@github.com:ggml-org/llama.cpp.git",
    "file:///home/user/Documents/report%202024.pdf",
    "C:\\Users\\Public\\Downloads\\setup.exe",
    "/usr/local/lib/python3.11/site-packages/torch/__init__.py",
    "<https://example.org> [link](https://example.org/a_b-c.d?e=f)",
    "mailto:someone@example.com?subject=Hello%20there",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
]

SPECIAL = [
    "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\nThe capital of France is Paris.<|end|>\n",
    "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\n",
    "<s><|user|>\nTranslate 'good morning' to Korean.<|end|>\n<|assistant|>\n좋은 아침입니다.<|end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about autumn.<|im_end|>\n<|im_start|>assistant\nCrisp leaves drift and fall<|im_end|>",
    "Text before <|endoftext|> and text after.",
    "<|endoftext|><|endoftext|>",
    "<s>[INST] Tell me a joke. [/INST] Why did the chicken cross the road?</s>",
    "Some </s> in the middle and <s> too",
    "<unk> unknown token written out",
    "<|end|>   spaces after end",
    "<|user|>\t\ttabs after user",
    "<|user|>\n\n\n  newlines and spaces after user",
    "<|assistant|>",
    "<|placeholder3|> and <|placeholder6|>",
    "[PAD32011] and [PAD32063] padding tokens",
    "<|user|",
    "<|end|",
    "< |end| >",
    "<|END|> is not special",
    "<<|user|>>",
    "<|user|><|user|><|user|>",
    "<|im_start|><|im_end|>",
    "<repo_name>lantern<file_sep>README.md\n# lantern",
    "<filename>src/main.py\n<gh_stars>1000",
    "<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<issue_start>Bug: crash on start<issue_comment>Same here<issue_closed>",
    "Use the <|im_end|> token to finish a turn.",
    "x<|end|>y<|user|>z",
    "<|end|>\n",
    "trailing special <|end|>",
    "<|system|>  \n  system prompt with leading and trailing spaces  <|end|>",
    "<s> <s>  <s>   ",
    "</s>\n</s>\n",
    "<|endoftext|>\n\nnewlines after endoftext",
    "<|user|>안녕하세요<|end|><|assistant|>안녕하세요! 무엇을 도와드릴까요?<|end|>",
    "<|user|>\n🦙🦙🦙<|end|>",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n你好！有什么可以帮你的吗？<|im_end|>",
]

CONTRACTIONS = [
    "It's, it'S, IT'S, they're, THEY'RE, we've, WE'VE, I'm, I'M, you'll, YOU'LL, he'd, HE'D",
    "'s 't 're 've 'm 'll 'd at the start",
    "rock 'n' roll, '90s music, 'twas the night",
    "Don't won't can't shouldn't mightn't'ven't",
    "the dog's bone, the dogs' bones, James's car",
    "''quoted'' and `backticks' and ‘curly’ “quotes”",
    "l'homme, aujourd'hui, qu'est-ce que c'est",
    "O'Neil's 'S' and 'D'",
]

MISC = [
    "!!!???...,,,;;;:::",
    "----------------------------------------------------------------------",
    "======================================================================",
    "##############################",
    "* * * * *",
    "________________________________________________",
    "~~~~~~~~~~~~~~~~",
    "()[]{}<>",
    "a-b_c.d/e\\f|g",
    "@user #hashtag $cashtag %percent ^caret &amp *star",
    "ALLCAPS lowercase MiXeDcAsE camelCase snake_case kebab-case PascalCase",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "abababababababababababababababababababab",
    "Supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
    "x",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "A",
    ".",
    "\\",
    "\\\\server\\share",
    "\"\"\"docstring\"\"\"",
    "¯\\_(ツ)_/¯",
    "(╯°□°)╯︵ ┻━┻",
    "ʕ•ᴥ•ʔ",
    "♪♫♬ la la la ♬♫♪",
    "█▓▒░ ░▒▓█",
    "\u0001\u0002 control characters \u001b[31mred\u001b[0m",
    "tab\u0009and bell\u0007",
    "\u00ad soft hyphen and \u00ad\u00ad",
    "ſtraße STRASSE straße",
    "U+2581 is ▁ (LOWER ONE EIGHTH BLOCK), ▁▁ twice, and ▁Hello",
]


def _english_lines(rng: random.Random) -> list[str]:
    lines = [l for l in ENGLISH.splitlines() if l]
    for _ in range(480):
        s = (f"{rng.choice(ENGLISH_SUBJECTS)} {rng.choice(ENGLISH_VERBS)} "
             f"{rng.choice(ENGLISH_OBJECTS)}{rng.choice(ENGLISH_TAILS)}")
        if rng.random() < 0.15:
            s = s.upper()
        if rng.random() < 0.2:
            s = " " + s
        lines.append(s)
    # multi-sentence paragraphs
    base = [l for l in ENGLISH.splitlines() if l]
    for _ in range(80):
        k = rng.randint(2, 5)
        sep = rng.choice([" ", "  ", "\n", "\n\n", " \n"])
        lines.append(sep.join(rng.sample(base, k)))
    return lines


def _code_lines(rng: random.Random) -> list[str]:
    lines = []
    for block in (PYTHON, C_CODE, OTHER_CODE):
        snippets = [s.strip("\n") for s in block.split("###")]
        for snip in snippets:
            lines.append(snip)                 # whole snippet, newlines escaped
            lines.extend(l for l in snip.split("\n") if l.strip())  # and each line alone
    # generated Python
    names = ["total", "count", "items", "result", "buffer", "offset", "user_id", "max_len", "cache"]
    funcs = ["len", "sum", "sorted", "min", "max", "list", "set", "str", "repr"]
    for i in range(160):
        a, b = rng.sample(names, 2)
        indent = " " * rng.choice([0, 4, 8, 12])
        kind = rng.randrange(6)
        if kind == 0:
            lines.append(f"{indent}{a} = {rng.choice(funcs)}({b})")
        elif kind == 1:
            lines.append(f"{indent}if {a} > {rng.randint(0, 1000)}:\n{indent}    return {b}")
        elif kind == 2:
            lines.append(f"{indent}for i, {a} in enumerate({b}):\n{indent}    print(f\"{{i:>4}}: {{{a}!r}}\")")
        elif kind == 3:
            lines.append(f"{indent}{a} += {b}[{rng.randint(0, 9)}] * {rng.random():.4f}  # scale")
        elif kind == 4:
            lines.append(f"{indent}def {a}_{b}(self, {a}: int = {rng.randint(0, 99)}, *, {b}=None) -> None:")
        else:
            lines.append(f"{indent}raise ValueError(f\"bad {a}: {{{a}}} (expected < {rng.randint(1, 64)})\")")
    # generated C
    for i in range(80):
        t = rng.choice(["int", "size_t", "uint8_t", "float", "double", "char *", "const char *"])
        a, b = rng.sample(names, 2)
        lines.append(rng.choice([
            f"{t} {a} = {b}[{rng.randint(0, 255)}];",
            f"    if ({a} == NULL) {{ return -{rng.randint(1, 40)}; }}",
            f"\tmemcpy({a}, {b}, sizeof({t.strip(' *')}) * {rng.randint(1, 4096)});",
            f"#define {a.upper()}_MAX 0x{rng.randint(0, 0xFFFF):04X}",
            f"/* {a} must be aligned to {rng.choice([4, 8, 16, 64])} bytes */",
        ]))
    # JSON
    words = ["alpha", "beta", "gamma", "délta", "東京", "서울", "naïve", "emoji 😀", "tab\there"]
    for i in range(90):
        obj = {
            "id": rng.randint(1, 10**9),
            "name": rng.choice(words),
            "score": round(rng.uniform(-1000, 1000), rng.randint(0, 6)),
            "tags": rng.sample(words, rng.randint(0, 4)),
            "active": rng.random() < 0.5,
            "parent": None if rng.random() < 0.5 else {"id": rng.randint(1, 99), "path": "/a/b/c"},
        }
        indent = rng.choice([None, 2, 4, "\t"])
        lines.append(json.dumps(obj, ensure_ascii=rng.random() < 0.3, indent=indent))
    return lines


def _misc_lines(rng: random.Random) -> list[str]:
    lines: list[str] = []
    multi = [l for l in MULTILINGUAL.splitlines() if l]
    lines += multi
    for _ in range(300):  # mixed-script lines
        k = rng.randint(2, 3)
        lines.append(rng.choice([" ", "  ", "\n", " — ", "\t"]).join(rng.sample(multi, k)))
    lines += EMOJI + COMBINING + WHITESPACE + NUMBERS + URLS + SPECIAL + CONTRACTIONS + MISC
    for _ in range(120):
        lines.append(" ".join(rng.sample(EMOJI, 2)))
    for _ in range(100):  # random numbers of many shapes
        n = rng.randint(1, 60)
        digits = "".join(rng.choice("0123456789") for _ in range(n))
        lines.append(rng.choice([digits, f"{digits}.{rng.randint(0, 99999)}", f"-{digits}",
                                 f"{int(digits):,}", f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{digits[:3]}",
                                 f"{digits} apples and {rng.randint(0, 10**6)} oranges"]))
    for _ in range(160):  # special tokens mixed into other text
        tok = rng.choice(["<|user|>", "<|end|>", "<|assistant|>", "<|system|>", "<|endoftext|>",
                          "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "<|placeholder1|>",
                          "[PAD32040]", "<repo_name>", "<file_sep>"])
        text = rng.choice(multi + [l for l in ENGLISH.splitlines() if l] + EMOJI)
        ws = rng.choice(["", " ", "\n", "  ", "\n\n", "\t", " \n "])
        lines.append(rng.choice([f"{tok}{ws}{text}", f"{text}{ws}{tok}", f"{text}{tok}{ws}{tok}{text}"]))
    for _ in range(80):  # whitespace runs around words
        w = rng.choice(["word", "단어", "単語", "كلمة", "🦙", "42", "x_y"])
        ws1 = "".join(rng.choice(" \t\n\r\u3000\u00a0") for _ in range(rng.randint(0, 6)))
        ws2 = "".join(rng.choice(" \t\n") for _ in range(rng.randint(0, 6)))
        lines.append(f"{ws1}{w}{ws2}{w}{ws1}")
    return lines


def build(seed: int = 20240601) -> list[str]:
    rng = random.Random(seed)
    lines = _english_lines(rng) + _code_lines(rng) + _misc_lines(rng)
    rng.shuffle(lines)
    return lines


def main() -> None:
    lines = build()
    text = "\n".join(encode_line(l) for l in lines) + "\n"
    assert [decode_line(l) for l in text.splitlines()] == lines
    OUT.write_text(text, encoding="utf-8")
    print(f"{OUT}: {len(lines)} samples, {len(text.encode('utf-8')):,} bytes")


if __name__ == "__main__":
    main()
