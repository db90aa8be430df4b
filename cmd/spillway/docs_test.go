package main

import (
	"flag"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/spillwayhq/spillway/forwarders"
)

// The documentation tests hold docs/configuration.md to the binary: every
// flag documented exists, every flag that exists is documented, with its
// default and environment variable, and every destination parameter
// documented for a kind is one that kind takes. They also check that
// every relative link in the Markdown files points at a file that exists.

// repoRoot is where README.md is: tests run in cmd/spillway.
const repoRoot = "../.."

const configurationDoc = "docs/configuration.md"

// docRow is one row of a Markdown table, with the headings it sits under.
type docRow struct {
	h2, h3 string
	cells  []string
	line   int
}

// readDocTables returns the rows of every table in the Markdown file at
// path (relative to the repository's root), header and separator rows
// left out.
func readDocTables(t *testing.T, path string) []docRow {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	var rows []docRow
	var h2, h3 string
	inFence, afterHeader := false, false
	for i, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		switch {
		case strings.HasPrefix(line, "## "):
			h2, h3 = strings.TrimSpace(line[3:]), ""
		case strings.HasPrefix(line, "### "):
			h3 = strings.TrimSpace(line[4:])
		}
		if !strings.HasPrefix(line, "|") {
			afterHeader = false
			continue
		}
		cells := splitRow(line)
		if len(cells) > 0 && strings.Trim(cells[0], "-: ") == "" {
			afterHeader = true // the separator: what follows is the body
			continue
		}
		if afterHeader {
			rows = append(rows, docRow{h2: h2, h3: h3, cells: cells, line: i + 1})
		}
	}
	return rows
}

// splitRow splits a table row into its trimmed cells; `\|` is a pipe
// inside a cell.
func splitRow(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, "|")
	line = strings.TrimSuffix(line, "|")
	var cells []string
	var cur strings.Builder
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line) && line[i+1] == '|':
			cur.WriteByte('|')
			i++
		case line[i] == '|':
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(line[i])
		}
	}
	return append(cells, strings.TrimSpace(cur.String()))
}

// leadingCode returns the text of the code span a cell starts with, and
// whether it starts with one.
func leadingCode(cell string) (string, bool) {
	if !strings.HasPrefix(cell, "`") {
		return "", false
	}
	code, _, ok := strings.Cut(cell[1:], "`")
	return code, ok
}

// documentedFlag is a flag as a table documents it.
type documentedFlag struct {
	env, def string // cells, as written
	line     int
}

// documentedFlags returns the flags that the tables under the heading h2
// document: rows whose first cell is `--name`. envCol is the column of
// the environment variable, or -1; defCol that of the default.
func documentedFlags(t *testing.T, rows []docRow, h2 string, envCol, defCol int) map[string]documentedFlag {
	t.Helper()
	out := map[string]documentedFlag{}
	for _, r := range rows {
		if r.h2 != h2 {
			continue
		}
		code, ok := leadingCode(r.cells[0])
		if !ok || !strings.HasPrefix(code, "--") {
			continue
		}
		name := strings.TrimPrefix(code, "--")
		if _, dup := out[name]; dup {
			t.Errorf("%s:%d: --%s is documented twice under %q", configurationDoc, r.line, name, h2)
		}
		if max(envCol, defCol) >= len(r.cells) {
			t.Errorf("%s:%d: --%s: the row has %d cells", configurationDoc, r.line, name, len(r.cells))
			continue
		}
		d := documentedFlag{def: r.cells[defCol], line: r.line}
		if envCol >= 0 {
			d.env = r.cells[envCol]
		}
		out[name] = d
	}
	if len(out) == 0 {
		t.Fatalf("%s documents no flag under %q", configurationDoc, h2)
	}
	return out
}

// normalDefault reduces a default to what it means, so that 1m0s and 60s,
// or 500 kB and 500KB, compare equal.
func normalDefault(s string) string {
	if d, err := time.ParseDuration(s); err == nil {
		return "duration " + d.String()
	}
	if n, err := humanize.ParseBytes(s); err == nil {
		return "number " + strconv.FormatUint(n, 10)
	}
	return "text " + s
}

// checkDefault reports whether the documented default cell says what the
// flag's default is. A cell for a flag without a default (empty, zero or
// false) either explains in words, without starting with a code span, or
// gives the zero value itself.
func checkDefault(t *testing.T, name, def string, doc documentedFlag) {
	t.Helper()
	code, isCode := leadingCode(doc.def)
	if def == "" || def == "0" || def == "false" {
		if isCode && normalDefault(code) != normalDefault(def) && !(def == "" && (code == "0" || code == "false")) {
			t.Errorf("%s:%d: --%s: documented default %q, but it has none (%q)", configurationDoc, doc.line, name, code, def)
		}
		return
	}
	if !isCode {
		t.Errorf("%s:%d: --%s: the default cell %q does not start with the default, `%s`", configurationDoc, doc.line, name, doc.def, def)
		return
	}
	if normalDefault(code) != normalDefault(def) {
		t.Errorf("%s:%d: --%s: documented default `%s`, but it is %q", configurationDoc, doc.line, name, code, def)
	}
}

// compareFlags checks documented flags against those the binary has
// (name to default).
func compareFlags(t *testing.T, what string, have map[string]string, doc map[string]documentedFlag) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(have)) {
		d, ok := doc[name]
		if !ok {
			t.Errorf("%s has --%s, which %s does not document", what, name, configurationDoc)
			continue
		}
		checkDefault(t, name, have[name], d)
	}
	for name, d := range doc {
		if _, ok := have[name]; !ok {
			t.Errorf("%s:%d: documents --%s, which %s does not have", configurationDoc, d.line, name, what)
		}
	}
}

func TestDocsConfigurationMatchesRunFlags(t *testing.T) {
	fs, _ := serverFlags(io.Discard)
	have := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { have[f.Name] = f.DefValue })

	doc := documentedFlags(t, readDocTables(t, configurationDoc), "spillway run", 1, 2)
	compareFlags(t, "spillway run", have, doc)
	for name, d := range doc {
		if want := "`" + envName(name) + "`"; d.env != want {
			t.Errorf("%s:%d: --%s: environment %s, want %s", configurationDoc, d.line, name, d.env, want)
		}
	}
}

// helpFlags runs the built binary with args and -h, and returns the flags
// its usage lists, with the defaults it shows ("" for none).
func helpFlags(t *testing.T, args ...string) map[string]string {
	t.Helper()
	out, err := exec.Command(binary, append(args, "-h")...).CombinedOutput()
	if err != nil {
		t.Fatalf("spillway %s -h: %v\n%s", strings.Join(args, " "), err, out)
	}
	flags := map[string]string{}
	name := ""
	for _, line := range strings.Split(string(out), "\n") {
		if m := helpFlagRE.FindStringSubmatch(line); m != nil {
			name = m[1]
			flags[name] = ""
			continue
		}
		if m := helpDefaultRE.FindStringSubmatch(line); m != nil && name != "" {
			def := m[1]
			if u, err := strconv.Unquote(def); err == nil {
				def = u
			}
			flags[name] = def
		}
	}
	if len(flags) == 0 {
		t.Fatalf("spillway %s -h lists no flag:\n%s", strings.Join(args, " "), out)
	}
	return flags
}

var (
	helpFlagRE    = regexp.MustCompile(`^  -([a-z0-9-]+)`)
	helpDefaultRE = regexp.MustCompile(`^\s+.*\(default (.*)\)$`)
)

func TestDocsConfigurationMatchesSubcommandFlags(t *testing.T) {
	rows := readDocTables(t, configurationDoc)
	for _, c := range []struct {
		heading string
		args    []string
	}{
		{"spillway status", []string{"status"}},
		{"spillway tail", []string{"tail"}},
		{"spillway dlq", []string{"dlq", "list"}},
		{"spillway dlq", []string{"dlq", "replay"}},
		{"spillway dlq", []string{"dlq", "purge"}},
		{"spillway replay", []string{"replay"}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			compareFlags(t, "spillway "+strings.Join(c.args, " "), helpFlags(t, c.args...),
				documentedFlags(t, rows, c.heading, -1, 1))
		})
	}
}

// kindURLs returns a well-formed URL of each destination kind.
func kindURLs(t *testing.T) map[string]string {
	t.Helper()
	return map[string]string{
		forwarders.KindSegment: "segment+https://api.segment.io",
		forwarders.KindWebhook: "https://hooks.example.com/events",
		forwarders.KindKafka:   "kafka://127.0.0.1:9092/events",
		forwarders.KindStdout:  "stdout://",
		forwarders.KindArchive: "s3://bucket/raw",
		forwarders.KindFile:    "file://" + filepath.Join(t.TempDir(), "events.ndjson"),
	}
}

// paramValues are values tried for a parameter: one of them is valid for
// every parameter that stands alone.
var paramValues = []string{"1", "1s", "true", "track", "json", "userId", "zstd", "all", "keep", "x"}

// takesParam reports whether a destination of the given kind (its URL in
// urls) takes the query parameter name. It does not rely on the wording of errors: a
// parameter is taken when one of paramValues is accepted and leaves the
// URL (a webhook keeps parameters that are not spillway's, for the
// endpoint). A parameter valid only with others (Kafka's sasl, user,
// password) is taken when what the kind makes of it differs both from
// what it makes of a parameter no kind has and from what a stdout
// destination, which takes none but the common ones, makes of it.
func takesParam(urls map[string]string, kind, name string) bool {
	rawURL := urls[kind]
	for _, v := range paramValues {
		d, err := forwarders.ParseDestination("d="+rawURL+"?"+name+"="+v, forwarders.Defaults{})
		if err == nil && !strings.Contains(d.URL, name+"=") {
			return true
		}
	}
	outcome := func(rawURL, param string) string {
		d, err := forwarders.ParseDestination("d="+rawURL+"?"+param+"=x", forwarders.Defaults{})
		if err != nil {
			return "error: " + strings.ReplaceAll(err.Error(), param, "PARAM")
		}
		return "url: " + strings.ReplaceAll(d.URL, param, "PARAM")
	}
	own := outcome(rawURL, name)
	if own == outcome(rawURL, "zz_no_such_parameter") {
		return false
	}
	return kind == forwarders.KindStdout || own != outcome(urls[forwarders.KindStdout], name)
}

func TestDocsConfigurationDestinationParametersExist(t *testing.T) {
	urls := kindURLs(t)
	everyKind := slices.Sorted(maps.Keys(urls))
	documented := 0
	for _, r := range readDocTables(t, configurationDoc) {
		if r.h2 != "Destinations" || r.h3 == "" {
			continue
		}
		name, ok := leadingCode(r.cells[0])
		if !ok {
			continue
		}
		var kinds []string
		switch h := strings.ToLower(r.h3); {
		case h == "every kind":
			kinds = everyKind
		case urls[h] != "":
			kinds = []string{h}
		default:
			t.Errorf("%s:%d: parameter %s under %q, which names no destination kind", configurationDoc, r.line, name, r.h3)
			continue
		}
		documented++
		for _, k := range kinds {
			if !takesParam(urls, k, name) {
				t.Errorf("%s:%d: documents the parameter %s for %s destinations, which do not take it", configurationDoc, r.line, name, k)
			}
		}
	}
	if documented == 0 {
		t.Fatalf("%s documents no destination parameter", configurationDoc)
	}
	// The probe itself must tell a parameter apart from one no kind has,
	// and from one another kind has.
	for _, c := range []struct{ kind, name string }{
		{forwarders.KindStdout, "zz_other_unknown"},
		{forwarders.KindWebhook, "zz_other_unknown"},
		{forwarders.KindWebhook, "write_key"},
		{forwarders.KindSegment, "format"},
		{forwarders.KindStdout, "compression"},
		{forwarders.KindKafka, "tls_ca"},
	} {
		if takesParam(urls, c.kind, c.name) {
			t.Errorf("takesParam says %s destinations take %s", c.kind, c.name)
		}
	}
}

// markdownFiles are the documents whose links are checked.
func markdownFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md", "BENCHMARKS.md"}
	docs, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		rel, err := filepath.Rel(repoRoot, d)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, rel)
	}
	return files
}

var (
	fenceRE      = regexp.MustCompile("(?ms)^```.*?^```")
	codeSpanRE   = regexp.MustCompile("`[^`\n]*`")
	linkRE       = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	schemeRE     = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	headingRE    = regexp.MustCompile(`(?m)^#{1,6}\s+(.+?)\s*#*\s*$`)
	slugStripped = regexp.MustCompile(`[^\p{L}\p{N} _-]`)
)

// anchors returns the anchors GitHub gives the headings of a Markdown
// text: lower case, punctuation dropped, spaces as dashes, a repeated one
// numbered.
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	for _, m := range headingRE.FindAllStringSubmatch(fenceRE.ReplaceAllString(text, ""), -1) {
		slug := strings.ReplaceAll(slugStripped.ReplaceAllString(strings.ToLower(m[1]), ""), " ", "-")
		if n := seen[slug]; n > 0 {
			out[slug+"-"+strconv.Itoa(n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	return out
}

func TestDocsRelativeLinksResolve(t *testing.T) {
	for _, file := range markdownFiles(t) {
		b, err := os.ReadFile(filepath.Join(repoRoot, file))
		if err != nil {
			t.Fatal(err)
		}
		text := codeSpanRE.ReplaceAllString(fenceRE.ReplaceAllString(string(b), ""), "")
		links := 0
		for _, m := range linkRE.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if schemeRE.MatchString(target) {
				continue // a web address
			}
			links++
			path, anchor, _ := strings.Cut(target, "#")
			resolved := filepath.Join(filepath.Dir(file), path)
			if path == "" {
				resolved = file
			}
			if _, err := os.Stat(filepath.Join(repoRoot, resolved)); err != nil {
				t.Errorf("%s: link %s: %s does not exist", file, target, resolved)
				continue
			}
			if anchor == "" || !strings.HasSuffix(resolved, ".md") {
				continue
			}
			doc, err := os.ReadFile(filepath.Join(repoRoot, resolved))
			if err != nil {
				t.Fatal(err)
			}
			if !anchors(string(doc))[anchor] {
				t.Errorf("%s: link %s: %s has no heading #%s", file, target, resolved, anchor)
			}
		}
		if file == "README.md" && links == 0 {
			t.Errorf("README.md has no relative link: it should lead into docs/")
		}
	}
}
