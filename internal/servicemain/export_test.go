package servicemain

import "testing"

// HandleArgs is handleArgs, for the external tests.
var HandleArgs = handleArgs

// SetConfigDocs makes ConfigVars read docs instead of configDocs until t
// ends, so that a test can render from doc comments it has just parsed (one
// -update run then rewrites configdocs.go and the README together).
func SetConfigDocs(t testing.TB, docs map[string]string) {
	old := configDocs
	configDocs = docs
	t.Cleanup(func() { configDocs = old })
}
