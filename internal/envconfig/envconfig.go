// Package envconfig is how every CascadeServe service reads its Config: one
// struct parsed by caarlos0/env from variables with the CASCADE_ prefix, the
// process environment in a binary and a plain map in tests and in the
// all-in-one binary.
package envconfig

import env "github.com/caarlos0/env/v10"

// Prefix starts the name of every configuration variable.
const Prefix = "CASCADE_"

// Parse fills cfg (a pointer to a struct with env tags) from environ.
//
// Some settings mean "off" when set to the empty string, listen addresses
// above all. caarlos0/env replaces an empty value with the field's
// envDefault, so for every variable named in off that environ sets to ""
// Parse stores "" in the field it points to.
func Parse(cfg any, environ map[string]string, off map[string]*string) error {
	if err := env.ParseWithOptions(cfg, env.Options{Prefix: Prefix, Environment: environ}); err != nil {
		return err
	}
	for name, field := range off {
		if v, ok := environ[name]; ok && v == "" {
			*field = ""
		}
	}
	return nil
}
