package servicemain_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/servicemain"
)

// The README's table of every CASCADE_* variable lies between these lines.
const (
	tableBegin = "<!-- config-table:begin: generated from the services' Config structs by go test ./internal/servicemain -run TestREADMEConfigTableIsCurrent -update -->"
	tableEnd   = "<!-- config-table:end -->"
)

// TestREADMEConfigTableIsCurrent regenerates the table of the README's
// Configuration section from the services' Config structs (the variables,
// defaults and doc comments their --help prints) and fails when the README
// differs. Rewrite it, with configdocs.go, by
//
//	go test ./internal/servicemain -run 'TestConfigDocsAreCurrent|TestREADMEConfigTableIsCurrent' -update
func TestREADMEConfigTableIsCurrent(t *testing.T) {
	// Render from the comments as they are now, not from configdocs.go,
	// which TestConfigDocsAreCurrent checks (or rewrites in this same run).
	docs, _ := configDocs(t)
	servicemain.SetConfigDocs(t, docs)

	path := filepath.Join("..", "..", "README.md")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	before, rest, ok := strings.Cut(readme, tableBegin+"\n")
	_, after, ok2 := strings.Cut(rest, tableEnd)
	if !ok || !ok2 {
		t.Fatalf("README.md has no lines %q and %q around the configuration table", tableBegin, tableEnd)
	}
	got := before + tableBegin + "\n\n" + configTable() + "\n" + tableEnd + after
	if *update {
		if got != readme {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	if got != readme {
		t.Errorf("README.md's configuration table is out of date with the Config structs: run go test ./internal/servicemain -run 'TestConfigDocsAreCurrent|TestREADMEConfigTableIsCurrent' -update")
	}
}

// configRow is one variable of the table.
type configRow struct {
	name     string
	services []string // which read it, in services order
	defaults []string // per service
	meaning  string
}

// configTable renders the Markdown table: one row per variable, those that
// every service reads first, then by the first service that reads them, in
// the field order of its Config.
func configTable() string {
	var rows []*configRow
	byName := map[string]*configRow{}
	for _, s := range services {
		for _, v := range servicemain.ConfigVars(s.typ) {
			r := byName[v.Name]
			if r == nil {
				// The first service's comment: the README describes each
				// variable once.
				r = &configRow{name: v.Name, meaning: meaning(v)}
				byName[v.Name] = r
				rows = append(rows, r)
			}
			r.services = append(r.services, s.name)
			r.defaults = append(r.defaults, v.Default)
		}
	}
	rank := func(r *configRow) int {
		if len(r.services) == len(services) {
			return -1
		}
		for i, s := range services {
			if s.name == r.services[0] {
				return i
			}
		}
		panic(r.services[0])
	}
	slices.SortStableFunc(rows, func(a, b *configRow) int { return rank(a) - rank(b) })

	var b strings.Builder
	b.WriteString("| variable | services | default | meaning |\n|---|---|---|---|\n")
	for _, r := range rows {
		readBy := strings.Join(r.services, ", ")
		if len(r.services) == len(services) {
			readBy = "all"
		}
		b.WriteString("| `" + r.name + "` | " + readBy + " | " + defaults(r) + " | " + markdown(r.meaning) + " |\n")
	}
	return b.String()
}

// defaults is the default column: the default, or each service's where
// they differ.
func defaults(r *configRow) string {
	code := func(d string) string {
		if d == "" {
			return "none"
		}
		return "`" + d + "`"
	}
	if len(slices.Compact(slices.Clone(r.defaults))) == 1 {
		if r.defaults[0] == "" {
			return ""
		}
		return code(r.defaults[0])
	}
	parts := make([]string, len(r.defaults))
	for i, d := range r.defaults {
		parts[i] = code(d) + " " + r.services[i]
	}
	return strings.Join(parts, ", ")
}

// meaning is a variable's doc comment without what the other columns say;
// a variable of a nested struct (telemetry.HTTPSecurity) is introduced by
// the first clause of its group's comment.
func meaning(v servicemain.Var) string {
	doc := plainDoc(v.Doc)
	if v.Group == "" {
		return doc
	}
	group := plainDoc(v.Group)
	if i := strings.IndexAny(group, ":."); i >= 0 {
		group = group[:i]
	}
	return group + ": " + doc
}

var (
	// envClause is a clause of a parenthesis naming the variable, with its
	// default: "CASCADE_X, default 5s".
	envClause = regexp.MustCompile(`^CASCADE_[A-Z0-9_]+(?:, (.*))?$`)
	// defaultSentence is a closing "Default 1s." of a comment.
	defaultSentence = regexp.MustCompile(`\s*\bDefault [^.:;]+\.$`)
)

// plainDoc drops from a comment the variable names and plain defaults the
// other columns show: "(CASCADE_X, default 5s; more)" becomes "(more)",
// "(CASCADE_X, default 0: meaning)" "(default 0: meaning)", and "(CASCADE_X)"
// nothing, as does a closing "Default 1s.".
func plainDoc(doc string) string {
	var b strings.Builder
	for {
		open := strings.IndexByte(doc, '(')
		if open < 0 {
			break
		}
		end, depth := -1, 0
		for i := open; i < len(doc) && end < 0; i++ {
			switch doc[i] {
			case '(':
				depth++
			case ')':
				if depth--; depth == 0 {
					end = i
				}
			}
		}
		if end < 0 {
			break
		}
		var keep []string
		for _, clause := range strings.Split(doc[open+1:end], "; ") {
			if m := envClause.FindStringSubmatch(clause); m != nil {
				if m[1] == "" || strings.HasPrefix(m[1], "default ") && !strings.Contains(m[1], ": ") {
					continue
				}
				clause = m[1]
			}
			keep = append(keep, clause)
		}
		if len(keep) == 0 {
			b.WriteString(strings.TrimRight(doc[:open], " "))
		} else {
			b.WriteString(doc[:open+1] + strings.Join(keep, "; ") + ")")
		}
		doc = doc[end+1:]
	}
	b.WriteString(doc)
	return defaultSentence.ReplaceAllString(b.String(), "")
}

// quotedWord is a quoted value such as "_INBOX.,_R_.".
var quotedWord = regexp.MustCompile("\"([^\"\\s`]+)\"")

// markdown escapes text for a table cell: a quoted value becomes a code span
// (its underscores are no emphasis), "<" outside code spans an entity (it
// would start an HTML tag), and pipes are escaped everywhere.
func markdown(text string) string {
	text = quotedWord.ReplaceAllString(text, "`$1`")
	parts := strings.Split(text, "`")
	for i := range parts {
		if i%2 == 0 {
			parts[i] = strings.ReplaceAll(parts[i], "<", "&lt;")
		}
	}
	return strings.ReplaceAll(strings.Join(parts, "`"), "|", `\|`)
}
