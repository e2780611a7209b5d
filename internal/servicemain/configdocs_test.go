package servicemain_test

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/servicemain"

	"github.com/cascadeserve/cascadeserve/internal/controller"
	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/stageworker"
)

var update = flag.Bool("update", false, "rewrite configdocs.go from the services' Config structs")

// services are the three service binaries as the README's table names
// them, in the order of its services and default columns, with their
// Config structs and the folder (relative to the module root) that
// declares each.
var services = []struct {
	name string
	dir  string
	typ  reflect.Type
}{
	{"ingress", "internal/ingress", reflect.TypeFor[ingress.Config]()},
	{"stage-worker", "internal/stageworker", reflect.TypeFor[stageworker.Config]()},
	{"controller", "internal/controller", reflect.TypeFor[controller.Config]()},
}

// configDocs returns the doc comment of every field of the services'
// Config structs as they are now (see structDocs), and the fields that
// have none.
func configDocs(t *testing.T) (docs map[string]string, missing []string) {
	t.Helper()
	docs = map[string]string{}
	for _, sc := range services {
		structDocs(t, filepath.Join("..", "..", sc.dir), sc.typ.Name(), docs, &missing)
	}
	return docs, missing
}

// TestConfigDocsAreCurrent regenerates configdocs.go from the doc comments
// of the services' Config structs and fails when the committed file
// differs. Rewrite it with
//
//	go test ./internal/servicemain -run TestConfigDocsAreCurrent -update
func TestConfigDocsAreCurrent(t *testing.T) {
	docs, missing := configDocs(t)
	for _, m := range missing {
		t.Errorf("%s has no doc comment: document it next to the field (the binary's --help prints it)", m)
	}
	got := renderConfigDocs(t, docs)
	if *update {
		if err := os.WriteFile("configdocs.go", got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile("configdocs.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("configdocs.go is out of date with the Config structs: run go test ./internal/servicemain -run TestConfigDocsAreCurrent -update")
	}
}

// TestEveryVariableIsDocumented: every variable a service binary reads is
// listed by its --help with a description.
func TestEveryVariableIsDocumented(t *testing.T) {
	for _, sc := range services {
		vars := servicemain.ConfigVars(sc.typ)
		if len(vars) < 8 {
			t.Errorf("%v: only %d variables found", sc.typ, len(vars))
		}
		seen := map[string]bool{}
		for _, v := range vars {
			if !strings.HasPrefix(v.Name, "CASCADE_") || seen[v.Name] {
				t.Errorf("%v: variable %q is unprefixed or listed twice", sc.typ, v.Name)
			}
			seen[v.Name] = true
			if strings.TrimSpace(v.Doc) == "" || (v.Group == "" && strings.HasPrefix(v.Name, "CASCADE_METRICS_TLS")) {
				t.Errorf("%v: %s has no description (document the Config field and regenerate configdocs.go)", sc.typ, v.Name)
			}
		}
		for _, want := range []string{"CASCADE_NATS_URL", "CASCADE_LOG_LEVEL", "CASCADE_METRICS_ADDR", "CASCADE_METRICS_BEARER_TOKEN"} {
			if !seen[want] {
				t.Errorf("%v: %s not listed", sc.typ, want)
			}
		}
	}
}

// goPackage is what structDocs needs of a parsed package: its name, struct
// types, and the imports of the file declaring each.
type goPackage struct {
	name    string
	structs map[string]*ast.StructType
	imports map[string]map[string]string // type → import name → path
}

func parsePackage(t *testing.T, dir string) goPackage {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	pkg := goPackage{structs: map[string]*ast.StructType{}, imports: map[string]map[string]string{}}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.ParseComments|parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		pkg.name = f.Name.Name
		imports := map[string]string{}
		for _, im := range f.Imports {
			path, _ := strconv.Unquote(im.Path.Value)
			name := filepath.Base(path)
			if im.Name != nil {
				name = im.Name.Name
			}
			imports[name] = path
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, s := range gd.Specs {
				ts := s.(*ast.TypeSpec)
				if st, ok := ts.Type.(*ast.StructType); ok {
					pkg.structs[ts.Name.Name] = st
					pkg.imports[ts.Name.Name] = imports
				}
			}
		}
	}
	return pkg
}

// structDocs records the doc comment of every field of struct typ in dir,
// and of the fields of nested structs of this module that caarlos0/env
// descends into, keyed "package.Type.Field". A field without a comment of
// its own shares the comment of a field just above that names it ("LogLevel
// is ...; LogFormat text or json."); a field without either is missing.
func structDocs(t *testing.T, dir, typ string, docs map[string]string, missing *[]string) {
	t.Helper()
	pkg := parsePackage(t, dir)
	st, ok := pkg.structs[typ]
	if !ok {
		t.Fatalf("no struct %s in %s", typ, dir)
	}
	prev := ""
	for _, f := range st.Fields.List {
		doc := strings.Join(strings.Fields(f.Doc.Text()), " ")
		for _, id := range f.Names {
			key := pkg.name + "." + typ + "." + id.Name
			switch {
			case !id.IsExported():
			case doc != "":
				docs[key] = doc
			case regexp.MustCompile(`\b` + id.Name + `\b`).MatchString(prev):
				docs[key] = prev
			default:
				*missing = append(*missing, key)
			}
		}
		if doc != "" {
			prev = doc
		}
		var tag string
		if f.Tag != nil {
			tag, _ = strconv.Unquote(f.Tag.Value)
		}
		if reflect.StructTag(tag).Get("env") != "" {
			continue
		}
		// A nested struct of this module: caarlos0/env reads its fields.
		switch ft := f.Type.(type) {
		case *ast.Ident:
			if _, ok := pkg.structs[ft.Name]; ok {
				structDocs(t, dir, ft.Name, docs, missing)
			}
		case *ast.SelectorExpr:
			pkgIdent, ok := ft.X.(*ast.Ident)
			if !ok {
				continue
			}
			path := pkg.imports[typ][pkgIdent.Name]
			if rel, ok := strings.CutPrefix(path, "github.com/cascadeserve/cascadeserve/"); ok {
				structDocs(t, filepath.Join("..", "..", rel), ft.Sel.Name, docs, missing)
			}
		}
	}
}

func renderConfigDocs(t *testing.T, docs map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	b.WriteString(`// Code generated by go test ./internal/servicemain -run TestConfigDocsAreCurrent -update; DO NOT EDIT.

package servicemain

// configDocs holds the doc comment of every field of the service binaries'
// Config structs, keyed "package.Type.Field", for their --help: comments
// are not available at run time.
var configDocs = map[string]string{
`)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "\t%q: %q,\n", k, docs[k])
	}
	b.WriteString("}\n")
	out, err := format.Source(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return out
}
