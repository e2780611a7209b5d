package servicemain

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"strings"

	"github.com/cascadeserve/cascadeserve/internal/buildinfo"
	"github.com/cascadeserve/cascadeserve/internal/envconfig"
)

//go:generate go test -run "TestConfigDocsAreCurrent|TestREADMEConfigTableIsCurrent" -update .

// Var is one environment variable of a service's Config.
type Var struct {
	// Name is the variable, CASCADE_ prefix included.
	Name string
	// Default is the envDefault tag ("" for none).
	Default string
	// Doc is the doc comment of the Config field, from configDocs.
	Doc string
	// Group, for a field of a nested struct such as telemetry.HTTPSecurity,
	// is the doc comment of the Config field that holds it.
	Group string
}

// ConfigVars lists the variables caarlos0/env reads into a value of type t
// (a Config struct), in field order: fields with an env tag, and the
// fields of nested structs under their envPrefix.
func ConfigVars(t reflect.Type) []Var {
	var out []Var
	configVars(t, envconfig.Prefix, "", &out)
	return out
}

func configVars(t reflect.Type, prefix, group string, out *[]Var) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		doc := configDocs[t.String()+"."+f.Name]
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		switch {
		case name != "":
			*out = append(*out, Var{Name: prefix + name, Default: f.Tag.Get("envDefault"), Doc: doc, Group: group})
		case f.Type.Kind() == reflect.Struct:
			configVars(f.Type, prefix+f.Tag.Get("envPrefix"), doc, out)
		}
	}
}

// handleArgs answers the command line of a service binary, which takes no
// arguments: -h and --help print the usage with every environment variable
// to stdout, --version the build; anything else is a usage error. done
// reports that the process should exit with code instead of serving.
func handleArgs(name, summary string, config reflect.Type, args []string, stdout, stderr io.Writer) (done bool, code int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	version := fs.Bool("version", false, "print the build and exit")
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		writeUsage(stdout, name, summary, ConfigVars(config))
		return true, 0
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v (see %s --help)\n", name, err, name)
		return true, 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "%s: unexpected argument %q: configure it with CASCADE_* environment variables (see %s --help)\n", name, fs.Arg(0), name)
		return true, 2
	case *version:
		fmt.Fprintf(stdout, "%s %s\n", name, buildinfo.Read())
		return true, 0
	}
	return false, 0
}

func writeUsage(w io.Writer, name, summary string, vars []Var) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s [-h | --help | --version]\n\n", name)
	wrap(&b, "", summary)
	b.WriteString("\nIt takes no arguments and is configured by these environment variables\n(unset: the default):\n\n")
	group := ""
	for _, v := range vars {
		if v.Group != group {
			// A nested struct's variables: its field's comment once, set apart.
			b.WriteString("\n")
			if v.Group != "" {
				wrap(&b, "  ", v.Group)
			}
			group = v.Group
		}
		b.WriteString("  " + v.Name)
		if v.Default != "" {
			fmt.Fprintf(&b, " (default %q)", v.Default)
		}
		b.WriteString("\n")
		wrap(&b, "      ", v.Doc)
	}
	io.WriteString(w, b.String())
}

// wrap writes text as lines of at most 80 columns, each starting with indent.
func wrap(b *strings.Builder, indent, text string) {
	line := indent
	for _, word := range strings.Fields(text) {
		if len(line) > len(indent) && len(line)+1+len(word) > 80 {
			b.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += word
	}
	if len(line) > len(indent) {
		b.WriteString(line + "\n")
	}
}
