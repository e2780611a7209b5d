package system_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// findChromium returns the path of a headless-capable Chromium, or skips
// t (fails it with CASCADE_REQUIRE_CHROMIUM=1). Debian: apt-get install
// chromium.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("CASCADE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CASCADE_REQUIRE_CHROMIUM") == "1" {
		t.Fatal("no chromium found (apt-get install chromium, or set CASCADE_CHROMIUM)")
	}
	t.Skip("no chromium found (apt-get install chromium, or set CASCADE_CHROMIUM)")
	return ""
}

// browser is a headless Chromium driven over the DevTools protocol on a
// pipe (--remote-debugging-pipe: JSON messages separated by NUL bytes on
// file descriptors 3 and 4), so no WebSocket client is needed. It drives
// one page.
type browser struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	out     *bufio.Reader
	session string

	mu     sync.Mutex
	nextID int
	stderr bytes.Buffer
}

// startBrowser launches Chromium with an empty page of width × height
// and attaches to it. It is killed by t.Cleanup.
func startBrowser(t *testing.T, width, height int) *browser {
	t.Helper()
	path := findChromium(t)
	// Chromium reads commands from fd 3 and writes to fd 4.
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	resR, resW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{in: cmdW, out: bufio.NewReaderSize(resR, 1<<20)}
	b.cmd = exec.Command(path, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-extensions", "--no-first-run", "--mute-audio", "--user-data-dir="+t.TempDir(),
		fmt.Sprintf("--window-size=%d,%d", width, height), "--remote-debugging-pipe", "about:blank")
	b.cmd.ExtraFiles = []*os.File{cmdR, resW}
	b.cmd.Stderr = &b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	cmdR.Close()
	resW.Close()
	t.Cleanup(func() {
		_ = b.in.Close()
		done := make(chan struct{})
		go func() { _ = b.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = b.cmd.Process.Kill()
			<-done
		}
		resR.Close()
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var targets struct {
		TargetInfos []struct {
			TargetID string `json:"targetId"`
			Type     string `json:"type"`
		} `json:"targetInfos"`
	}
	if err := b.call(ctx, "", "Target.getTargets", nil, &targets); err != nil {
		t.Fatalf("chromium: %v\n%s", err, b.stderr.String())
	}
	target := ""
	for _, ti := range targets.TargetInfos {
		if ti.Type == "page" {
			target = ti.TargetID
			break
		}
	}
	if target == "" {
		var created struct {
			TargetID string `json:"targetId"`
		}
		if err := b.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &created); err != nil {
			t.Fatal(err)
		}
		target = created.TargetID
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target, "flatten": true}, &att); err != nil {
		t.Fatal(err)
	}
	b.session = att.SessionID
	if err := b.call(ctx, b.session, "Emulation.setDeviceMetricsOverride",
		map[string]any{"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}, nil); err != nil {
		t.Fatal(err)
	}
	return b
}

// call sends one command and waits for its answer, skipping events.
func (b *browser) call(ctx context.Context, session, method string, params any, result any) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nextID++
	id := b.nextID
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if _, err := b.in.Write(append(body, 0)); err != nil {
		return fmt.Errorf("%s: write: %w", method, err)
	}
	type answer struct {
		raw []byte
		err error
	}
	got := make(chan answer, 1)
	go func() {
		for {
			raw, err := b.out.ReadBytes(0)
			if err != nil {
				got <- answer{err: err}
				return
			}
			var head struct {
				ID int `json:"id"`
			}
			raw = raw[:len(raw)-1]
			if json.Unmarshal(raw, &head) == nil && head.ID == id {
				got <- answer{raw: raw}
				return
			}
		}
	}()
	var a answer
	select {
	case a = <-got:
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
	if a.err != nil {
		return fmt.Errorf("%s: read: %w", method, a.err)
	}
	var res struct {
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(a.raw, &res); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	if res.Error != nil {
		return fmt.Errorf("%s: %d %s", method, res.Error.Code, res.Error.Message)
	}
	if result != nil {
		return json.Unmarshal(res.Result, result)
	}
	return nil
}

// navigate opens url in the page.
func (b *browser) navigate(ctx context.Context, url string) error {
	var res struct {
		ErrorText string `json:"errorText"`
	}
	if err := b.call(ctx, b.session, "Page.navigate", map[string]any{"url": url}, &res); err != nil {
		return err
	}
	if res.ErrorText != "" {
		return errors.New("navigate: " + res.ErrorText)
	}
	return nil
}

// eval evaluates a JavaScript expression in the page and decodes its
// value (returned by value: make it JSON-serialisable) into out.
func (b *browser) eval(ctx context.Context, expr string, out any) error {
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := b.call(ctx, b.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res); err != nil {
		return err
	}
	if res.ExceptionDetails != nil {
		return errors.New("evaluate: " + res.ExceptionDetails.Text)
	}
	return json.Unmarshal(res.Result.Value, out)
}

// screenshot returns a PNG of the page.
func (b *browser) screenshot(ctx context.Context) ([]byte, error) {
	var res struct {
		Data []byte `json:"data"` // base64 in JSON
	}
	if err := b.call(ctx, b.session, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &res); err != nil {
		return nil, err
	}
	return res.Data, nil
}
