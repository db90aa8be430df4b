// Command recoverytime measures how long spillway takes to come back after
// a power cut, against the size of the backlog it has to recover: for each
// backlog it stores that many events with the destination refusing them,
// cuts the power (internal/powercut: everything not fsynced is lost), and
// starts spillway again on what is left, timing exec to /readyz answering
// 200, exec to the first event delivered, and exec to the whole backlog
// delivered. It needs root and FUSE, and listens on 127.0.0.1 only.
//
//	go run ./scripts/recoverytime [--backlogs 0,100000,1000000]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spillwayhq/spillway/internal/powercut"
)

func main() {
	backlogs := flag.String("backlogs", "0,100000,1000000", "backlog sizes in events, comma-separated")
	bin := flag.String("bin", "", "spillway binary (default: built from ./cmd/spillway)")
	flag.Parse()
	if err := run(*backlogs, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "recoverytime:", err)
		os.Exit(1)
	}
}

func run(backlogs, bin string) error {
	if err := powercut.Available(); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "spillway-recovery-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if bin == "" {
		bin = filepath.Join(work, "spillway")
		build := exec.Command("go", "build", "-o", bin, "./cmd/spillway")
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build spillway: %w", err)
		}
	}
	fmt.Printf("%10s  %10s  %14s  %12s  %10s\n", "backlog", "ready ms", "first event ms", "drained ms", "events/s")
	for i, f := range strings.Split(backlogs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("backlog %q: %w", f, err)
		}
		r, err := measure(bin, filepath.Join(work, strconv.Itoa(i)), n)
		if err != nil {
			return fmt.Errorf("backlog %d: %w", n, err)
		}
		rate := "-"
		if n > 0 {
			rate = fmt.Sprintf("%.0f", float64(n)/r.drained.Seconds())
		}
		fmt.Printf("%10d  %10.1f  %14s  %12s  %10s\n", n, ms(r.ready), msOrDash(r.first, n), msOrDash(r.drained, n), rate)
	}
	return nil
}

type recovery struct{ ready, first, drained time.Duration }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func msOrDash(d time.Duration, n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", ms(d))
}

// measure fills a spool with n undelivered events, cuts the power, and
// times the next start.
func measure(bin, dir string, n int) (recovery, error) {
	disk, mnt := filepath.Join(dir, "disk"), filepath.Join(dir, "mnt")
	for _, d := range []string{disk, mnt} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return recovery{}, err
		}
	}
	sink, err := newSink()
	if err != nil {
		return recovery{}, err
	}
	defer sink.close()
	fs, err := powercut.Mount(powercut.Options{Dir: disk, Mountpoint: mnt})
	if err != nil {
		return recovery{}, err
	}
	args := []string{"--spool-dir", filepath.Join(mnt, "spool"), "--destination", "sink=" + sink.url,
		"--backoff-min", "10ms", "--backoff-max", "50ms", "--spool-max-bytes", "4GiB"}
	p, addr, err := start(bin, args)
	if err != nil {
		_ = fs.Unmount()
		return recovery{}, err
	}
	if err := waitReady(addr, p); err != nil {
		_ = fs.Unmount()
		return recovery{}, err
	}
	if err := fill(addr, n); err != nil {
		_ = fs.Unmount()
		return recovery{}, err
	}
	if _, err := fs.Cut(powercut.Clean, func() error { return kill(p) }); err != nil {
		return recovery{}, err
	}
	if fs, err = powercut.Mount(powercut.Options{Dir: disk, Mountpoint: mnt}); err != nil {
		return recovery{}, err
	}
	defer fs.Unmount()
	sink.accept.Store(true)
	began := time.Now()
	p, addr, err = start(bin, args)
	if err != nil {
		return recovery{}, err
	}
	defer kill(p)
	if err := waitReady(addr, p); err != nil {
		return recovery{}, err
	}
	r := recovery{ready: time.Since(began)}
	for deadline := time.Now().Add(10 * time.Minute); int(sink.events.Load()) < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return r, fmt.Errorf("%d of %d events delivered after 10 minutes", sink.events.Load(), n)
		}
	}
	if n > 0 {
		r.first = sink.firstAt().Sub(began)
		r.drained = sink.lastAt().Sub(began)
	}
	return r, nil
}

func start(bin string, args []string) (*exec.Cmd, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, append([]string{"run", "--listen", addr}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd, addr, cmd.Start()
}

func kill(p *exec.Cmd) error {
	_ = p.Process.Kill()
	_ = p.Wait()
	return nil
}

func waitReady(addr string, p *exec.Cmd) error {
	client := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		resp, err := client.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if p.ProcessState != nil {
			return errors.New("spillway exited at start-up")
		}
	}
	return errors.New("spillway not ready after 5 minutes")
}

// fill posts n events in batches of 500 from four clients.
func fill(addr string, n int) error {
	const batch = 500
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			client := &http.Client{Timeout: 30 * time.Second}
			for {
				first := next.Add(batch) - batch
				if first >= int64(n) {
					return
				}
				if err := post(client, addr, first, min(batch, n-int(first))); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func post(client *http.Client, addr string, first int64, count int) error {
	var b bytes.Buffer
	b.WriteString(`{"batch":[`)
	for i := range count {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"type":"track","event":"Order Completed","userId":"user-%d","messageId":"m-%d",`+
			`"properties":{"order_id":"o-%d","revenue":%d.5,"currency":"EUR","sku":"sku-%d"},`+
			`"context":{"library":{"name":"analytics-node","version":"2.2.1"},"ip":"10.1.%d.%d","locale":"de-DE"}}`,
			(first+int64(i))%20000, first+int64(i), first+int64(i), i%300, i%4000, i%250, (i*7)%250)
	}
	b.WriteString(`]}`)
	for {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+addr+"/v1/batch", bytes.NewReader(b.Bytes()))
		req.SetBasicAuth("wk", "")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			return nil
		case http.StatusServiceUnavailable:
			time.Sleep(10 * time.Millisecond)
		default:
			return fmt.Errorf("POST /v1/batch: %s", resp.Status)
		}
	}
}

// sink refuses every request until accept is set, then counts events and
// remembers when the first and the last arrived.
type sink struct {
	srv    *http.Server
	url    string
	accept atomic.Bool
	events atomic.Int64
	mu     sync.Mutex
	first  time.Time
	last   time.Time
}

func newSink() (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sink{url: "http://" + ln.Addr().String() + "/"}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve)}
	go s.srv.Serve(ln)
	return s, nil
}

func (s *sink) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if !s.accept.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	n := bytes.Count(body, []byte(`"messageId"`))
	now := time.Now()
	s.mu.Lock()
	if s.first.IsZero() {
		s.first = now
	}
	s.last = now
	s.mu.Unlock()
	s.events.Add(int64(n))
	w.WriteHeader(http.StatusOK)
}

func (s *sink) firstAt() time.Time { s.mu.Lock(); defer s.mu.Unlock(); return s.first }
func (s *sink) lastAt() time.Time  { s.mu.Lock(); defer s.mu.Unlock(); return s.last }
func (s *sink) close()             { _ = s.srv.Close() }
