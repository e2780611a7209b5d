package natsbus

import (
	"log/slog"
	"strings"
	"testing"
)

func TestRedactURLHidesPasswords(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://worker:s3cret@nats:4222", "nats://worker:xxxxx@nats:4222"},
		{"nats://a:p1@h1:4222,nats://b:p2@h2:4222", "nats://a:xxxxx@h1:4222,nats://b:xxxxx@h2:4222"},
		{"nats://s3cret-token@h:4222", "nats://xxxxx@h:4222"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestConnectErrorDoesNotLeakThePassword(t *testing.T) {
	// Nothing listens on port 1 of loopback: the dial fails at once.
	_, err := Connect("nats://worker:s3cret@127.0.0.1:1", "test", slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("connected to a closed port")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %q shows the password", err)
	}
}
