package envconfig

import "testing"

func TestParseKeepsExplicitlyEmptyOffSettings(t *testing.T) {
	type config struct {
		Addr  string `env:"ADDR" envDefault:":9090"`
		Other string `env:"OTHER" envDefault:"x"`
	}
	for _, tc := range []struct {
		name      string
		environ   map[string]string
		addr, oth string
	}{
		{"unset takes the default", map[string]string{}, ":9090", "x"},
		{"set", map[string]string{"CASCADE_ADDR": ":1"}, ":1", "x"},
		{"empty means off", map[string]string{"CASCADE_ADDR": "", "CASCADE_OTHER": ""}, "", "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c config
			if err := Parse(&c, tc.environ, map[string]*string{"CASCADE_ADDR": &c.Addr}); err != nil {
				t.Fatal(err)
			}
			if c.Addr != tc.addr || c.Other != tc.oth {
				t.Fatalf("got %+v, want Addr %q Other %q", c, tc.addr, tc.oth)
			}
		})
	}
}
