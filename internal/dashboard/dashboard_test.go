package dashboard

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
)

func state(at int64, gear int, offered float64) State {
	return State{Pipeline: "p", AtUnixMs: at, Gear: Gear{ID: "g" + string(rune('1'+gear)), Index: gear}, OfferedQPS: offered}
}

func serve(t *testing.T) (*Hub, *httptest.Server) {
	t.Helper()
	h := NewHub()
	mux := http.NewServeMux()
	h.Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close) // runs first: ends the event streams
	return h, srv
}

func TestStateAndTimeline(t *testing.T) {
	h, srv := serve(t)
	resp, err := http.Get(srv.URL + "/dashboard/state")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("state before the first publish: %s", resp.Status)
	}
	// 4 states a second for 20 minutes: one point a second is kept, and
	// every gear change; ten minutes of them.
	at := int64(1_700_000_000_000)
	for i := range 4 * 1200 {
		gear := 0
		if i%400 >= 200 {
			gear = 1
		}
		h.Publish(state(at+int64(i)*250, gear, float64(i)))
	}
	resp, err = http.Get(srv.URL + "/dashboard/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s State
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if s.OfferedQPS != 4*1200-1 || len(s.History) != maxPoints {
		t.Fatalf("latest offered %v, %d history points (want %d)", s.OfferedQPS, len(s.History), maxPoints)
	}
	for i := 1; i < len(s.History); i++ {
		if d := s.History[i].AtUnixMs - s.History[i-1].AtUnixMs; d < 1000 && s.History[i].Gear == s.History[i-1].Gear {
			t.Fatalf("points %d and %d are %d ms apart in one gear", i-1, i, d)
		}
	}
	if last := s.History[len(s.History)-1]; last.AtUnixMs < at+int64(4*1200-5)*250 {
		t.Errorf("the timeline ends at %d, long before the latest state", last.AtUnixMs)
	}
}

func TestEventStream(t *testing.T) {
	h, srv := serve(t)
	h.Publish(state(1, 0, 10))
	resp, err := http.Get(srv.URL + "/dashboard/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	events := make(chan State, 16)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var s State
				if json.Unmarshal([]byte(data), &s) == nil {
					events <- s
				}
			}
		}
	}()
	next := func() State {
		t.Helper()
		select {
		case s, ok := <-events:
			if !ok {
				t.Fatal("the stream ended")
			}
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		return State{}
	}
	// The latest state at once, then each new one.
	if s := next(); s.OfferedQPS != 10 || s.History != nil {
		t.Fatalf("first event %+v", s)
	}
	h.Publish(state(2, 1, 20))
	if s := next(); s.OfferedQPS != 20 || s.Gear.Index != 1 {
		t.Fatalf("second event %+v", s)
	}
	// Close ends the stream.
	h.Close()
	select {
	case _, ok := <-events:
		if ok {
			for range events {
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not end after Close")
	}
}

// TestPageIsSelfContained checks that the page loads nothing from
// elsewhere (it must work offline and behind a proxy prefix) and is served
// at /dashboard and /dashboard/.
func TestPageIsSelfContained(t *testing.T) {
	_, srv := serve(t)
	for _, path := range []string{"/dashboard", "/dashboard/"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), `id="gear-id"`) {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
	}
	if m := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|https?://|@import`).FindAllString(string(page), -1); m != nil {
		t.Errorf("the page refers to outside resources: %q", m)
	}
	if !strings.Contains(string(page), `location.pathname`) {
		t.Error("the page does not derive its endpoints from its own path")
	}
}
