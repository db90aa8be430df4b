package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// findChromium returns Debian's chromium (or another Chrome) or skips the
// test; under CI=true a missing browser fails it, since .ci/run installs it.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const msg = "chromium is not installed (apt-get install -y chromium); the /ui browser test needs it"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + ", and CI=true: .ci/run should have installed it")
	}
	t.Skip(msg)
	return ""
}

// newBrowser starts a headless chromium, with a profile of its own, that
// lives as long as ctx and the test.
func newBrowser(t *testing.T, ctx context.Context, chromium string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(t.TempDir()))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	return bctx
}

// browserProblem describes ev when it is the page reporting something
// wrong: a console error, warning or failed assertion, an uncaught
// exception, or a browser log entry at warning or above (failed loads,
// CORS refusals).
func browserProblem(ev any) (string, bool) {
	switch e := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeWarning || e.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range e.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			return fmt.Sprintf("console.%s: %s", e.Type, strings.Join(args, " ")), true
		}
	case *runtime.EventExceptionThrown:
		d := e.ExceptionDetails
		text := d.Text
		if d.Exception != nil {
			text += " " + d.Exception.Description
		}
		return "exception: " + text, true
	case *log.EventEntryAdded:
		if e.Entry.Level == log.EntryLevelError || e.Entry.Level == log.EntryLevelWarning {
			return fmt.Sprintf("%s %s: %s %s", e.Entry.Source, e.Entry.Level, e.Entry.Text, e.Entry.URL), true
		}
	}
	return "", false
}

// TestUIInAHeadlessBrowser opens /ui in chromium against the real binary
// with a healthy and a failing destination.
func TestUIInAHeadlessBrowser(t *testing.T) {
	t.Parallel()
	chromium := findChromium(t)
	healthy, failing := newSink(t), newSink(t)
	failing.setStatus(http.StatusServiceUnavailable)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(),
		"--destination", "healthy="+healthy.URL, "--destination", "failing="+failing.URL,
		"--flush-interval", "20ms", "--backoff-min", "50ms", "--backoff-max", "200ms")
	client := &http.Client{Timeout: 10 * time.Second}
	if status, err := postBatch(t.Context(), client, p.url(), "wk", trackEvents("before-ui", 5)); err != nil || status != 200 {
		t.Fatalf("POST: %d %v", status, err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	bctx := newBrowser(t, ctx, chromium)

	var mu sync.Mutex
	var problems, requests []string
	err := chromedp.Listen(bctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		if problem, ok := browserProblem(ev); ok {
			problems = append(problems, problem)
		}
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			requests = append(requests, e.Request.URL)
		}
	})
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}

	state := func(dest string) string {
		return fmt.Sprintf(`document.querySelector('[data-dest=%q] .state')?.textContent`, dest)
	}
	if err := chromedp.Do(bctx,
		chromedp.Navigate(p.url()+"/ui"),
		chromedp.WaitVisible(`[data-dest="healthy"]`),
		chromedp.WaitVisible(`[data-dest="failing"]`),
		chromedp.Poll[chromedp.Void](state("healthy")+` === 'up' && `+state("failing")+` === 'failing'`,
			chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)),
	); err != nil {
		t.Fatalf("the page does not show healthy up and failing failing: %v", err)
	}
	backlog, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector('[data-dest="failing"] .backlog').textContent`))
	if err != nil || backlog != "5" {
		t.Errorf("failing's backlog shows %q (%v), want 5", backlog, err)
	}
	if err := chromedp.Do(bctx, chromedp.Poll[chromedp.Void](
		`document.querySelector('[data-dest="healthy"] polyline').getAttribute('points').split(' ').length >= 2`,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(10*time.Second)),
	); err != nil {
		t.Errorf("the backlog chart draws no line: %v", err)
	}

	// A live event: sent after the page opened, it shows in the tail.
	id := fmt.Sprintf("ui-live-%d", time.Now().UnixNano())
	live := []map[string]any{{"type": "track", "event": "Live From The Test", "userId": "ui-user", "messageId": id}}
	if status, err := postBatch(t.Context(), client, p.url(), "wk", live); err != nil || status != 200 {
		t.Fatalf("POST: %d %v", status, err)
	}
	row := fmt.Sprintf(`document.querySelector('#tail tr[data-message-id=%q]')`, id)
	if err := chromedp.Do(bctx, chromedp.Poll[chromedp.Void](row,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(10*time.Second)),
	); err != nil {
		t.Fatalf("the live event %s did not appear in the tail: %v", id, err)
	}
	text, err := chromedp.Run(bctx, chromedp.Evaluate[string](row+`.textContent`))
	if err != nil || !strings.Contains(text, "Live From The Test") || !strings.Contains(text, "ui-user") {
		t.Errorf("the tail row reads %q (%v)", text, err)
	}

	mu.Lock()
	defer mu.Unlock()
	for _, pr := range problems {
		t.Errorf("browser reported: %s", pr)
	}
	for _, u := range requests {
		if !strings.HasPrefix(u, p.url()+"/") {
			t.Errorf("the page fetched %s: it must need nothing but spillway", u)
		}
	}
}
