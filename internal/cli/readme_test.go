package cli

import (
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
)

// The README states facts about the build and the CLI that these tests
// check against go.mod and the code.

func readRepoFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestREADMEGoVersion: the Go version the README asks for is go.mod's.
func TestREADMEGoVersion(t *testing.T) {
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(readRepoFile(t, "go.mod"))
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	claims := regexp.MustCompile(`Go ≥ (\S+?)[ ,)]`).FindAllStringSubmatch(readRepoFile(t, "README.md"), -1)
	if len(claims) == 0 {
		t.Error("README states no Go version")
	}
	for _, c := range claims {
		if c[1] != m[1] {
			t.Errorf("README says Go ≥ %s, go.mod says go %s", c[1], m[1])
		}
	}
}

// TestREADMEDependencies: the README's dependency table lists every module
// go.mod requires directly, and a module required only indirectly is
// marked as such instead of credited with work it does not do.
func TestREADMEDependencies(t *testing.T) {
	direct := map[string]bool{} // module → required directly
	inRequire := false
	for _, line := range strings.Split(readRepoFile(t, "go.mod"), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "require (":
			inRequire = true
		case line == ")":
			inRequire = false
		case inRequire && line != "":
			direct[strings.Fields(line)[0]] = !strings.HasSuffix(line, "// indirect")
		}
	}
	readme := readRepoFile(t, "README.md")
	_, deps, ok := strings.Cut(readme, "\n## Dependencies\n")
	if !ok {
		t.Fatal("README has no Dependencies section")
	}
	deps, _, _ = strings.Cut(deps, "\n## ")
	listed := map[string]bool{}
	for _, row := range regexp.MustCompile(`(?m)^\| (\S+) \| (.*) \|$`).FindAllStringSubmatch(deps, -1) {
		mod, why := row[1], row[2]
		if mod == "module" {
			continue
		}
		listed[mod] = true
		isDirect, required := direct[mod]
		switch {
		case !required:
			t.Errorf("README lists %s, which go.mod does not require", mod)
		case !isDirect && !strings.Contains(why, "indirect"):
			t.Errorf("README credits %s with %q, but go.mod requires it only indirectly", mod, why)
		}
	}
	for mod, isDirect := range direct {
		if isDirect && !listed[mod] {
			t.Errorf("go.mod requires %s, the README's dependency table does not list it", mod)
		}
	}
}

// TestREADMEDataDir: the README says where `up` keeps its store and how to
// remove it, as the --data flag's default has it.
func TestREADMEDataDir(t *testing.T) {
	var sf systemFlags
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	sf.register(fs, Env{Getenv: func(string) string { return "" }}, "info")
	dir := fs.Lookup("data").DefValue
	readme := readRepoFile(t, "README.md")
	_, running, _ := strings.Cut(readme, "\n## Running it\n")
	running, _, _ = strings.Cut(running, "\n## ")
	for _, want := range []string{"in `" + dir + "` under the working\ndirectory", "`rm -rf " + dir + "`", "`--data DIR`"} {
		if !strings.Contains(running, want) {
			t.Errorf("README's Running it lacks %q (up's --data defaults to %q)", want, dir)
		}
	}
}
