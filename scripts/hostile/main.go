// Command hostile measures two facts about a real spillway process (issue
// #8): its peak RSS while it holds thousands of idle keep-alive connections,
// and the time it takes to answer a 1 GiB gzip bomb.
//
//	go run ./scripts/hostile                 # builds spillway, 5,000 connections
//	go run ./scripts/hostile --conns 1000 --bin ./spillway
//
// Each connection sends one track event, reads its 200 and stays open,
// idle. RSS is read from /proc (VmRSS now, VmHWM the peak), so this runs on
// Linux. The bombs are single gzip streams of zeros: 400 MiB fits the
// default 500 KiB wire limit (--max-request-bytes bounds the body after
// inflation too, so only the inflation cap stops it); 1 GiB is about 1 MiB
// on the wire, so it is sent to a second process started with
// --max-request-bytes 2MiB to reach inflation at all.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"github.com/spillwayhq/spillway/internal/procstat"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
)

func main() {
	bin := flag.String("bin", "", "spillway binary (default: build ./cmd/spillway)")
	conns := flag.Int("conns", 5000, "idle keep-alive connections to hold")
	tries := flag.Int("tries", 5, "bombs sent to each process, the median reported")
	flag.Parse()
	if err := run(*bin, *conns, *tries); err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(1)
	}
}

func run(bin string, conns, tries int) error {
	tmp, err := os.MkdirTemp("", "spillway-hostile-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if bin == "" {
		bin = filepath.Join(tmp, "spillway")
		fmt.Println("building spillway")
		if out, err := exec.Command("go", "build", "-o", bin, "./cmd/spillway").CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v\n%s", err, out)
		}
	}

	// Process A: default flags.
	a, err := start(bin, filepath.Join(tmp, "a"), "--max-conns", strconv.Itoa(conns+100))
	if err != nil {
		return err
	}
	defer a.stop()
	base, _ := a.rss()
	fmt.Printf("\nidle keep-alive connections (default flags but --max-conns %d)\n", conns+100)
	fmt.Printf("  at rest:            RSS %s\n", mib(base))
	held, err := holdConns(a.addr, conns)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	if err != nil {
		return err
	}
	time.Sleep(3 * time.Second) // idle: let the server park them
	now, peak := a.rss()
	fmt.Printf("  %5d held idle:     RSS %s, peak RSS %s, %.1f KiB a connection\n",
		len(held), mib(now), mib(peak), float64(now-base)/1024/float64(len(held)))
	for _, c := range held {
		c.Close()
	}
	held = nil

	fmt.Println("\ngzip bombs (single gzip streams of zeros)")
	bomb400, err := bomb(400 << 20)
	if err != nil {
		return err
	}
	if err := sendBombs(a, "400 MiB, default limits", bomb400, tries); err != nil {
		return err
	}
	b, err := start(bin, filepath.Join(tmp, "b"), "--max-request-bytes", "2MiB")
	if err != nil {
		return err
	}
	defer b.stop()
	bomb1g, err := bomb(1 << 30)
	if err != nil {
		return err
	}
	return sendBombs(b, "1 GiB, --max-request-bytes 2MiB", bomb1g, tries)
}

type proc struct {
	cmd  *exec.Cmd
	addr string
}

func start(bin, dir string, args ...string) (*proc, error) {
	addr, err := procstat.FreeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, append([]string{"run", "--listen", addr, "--spool-dir", dir}, args...)...)
	cmd.Stdout = io.Discard // the stdout:// destination
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, addr: addr}
	if err := procstat.WaitReady(context.Background(), "http://"+addr, 20*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	http.DefaultClient.CloseIdleConnections()
	return p, nil
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// rss returns VmRSS and VmHWM (peak) in bytes.
func (p *proc) rss() (now, peak int64) {
	now, _ = procstat.StatusKiB(p.cmd.Process.Pid, "VmRSS")
	peak, _ = procstat.StatusKiB(p.cmd.Process.Pid, "VmHWM")
	return now << 10, peak << 10
}

// holdConns opens n connections, each sending one event and reading its
// answer, and returns them open.
func holdConns(addr string, n int) ([]net.Conn, error) {
	body := `{"userId":"u","event":"idle","properties":{"n":1}}`
	req := fmt.Sprintf("POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	out := make([]net.Conn, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.WriteString(c, req); err != nil {
				errs <- err
				c.Close()
				return
			}
			resp, err := http.ReadResponse(bufio.NewReaderSize(c, 512), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("connection %d: %v %v", i, err, resp)
				c.Close()
				return
			}
			io.Copy(io.Discard, resp.Body)
			c.SetDeadline(time.Time{})
			out[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	held := slices.DeleteFunc(out, func(c net.Conn) bool { return c == nil })
	if err := <-errs; err != nil {
		return held, fmt.Errorf("%d of %d connections failed, first: %w", n-len(held), n, err)
	}
	return held, nil
}

// bomb is a single gzip stream of n zero bytes.
func bomb(n int64) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	zeros := make([]byte, 1<<20)
	for written := int64(0); written < n; written += int64(len(zeros)) {
		if _, err := zw.Write(zeros); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), zw.Close()
}

func sendBombs(p *proc, what string, body []byte, tries int) error {
	_, peakBefore := p.rss()
	client := &http.Client{Timeout: 60 * time.Second}
	defer client.CloseIdleConnections()
	var took []time.Duration
	var answer string
	for range tries {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+p.addr+"/v1/batch", bytes.NewReader(body))
		req.Header.Set("Content-Encoding", "gzip")
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took = append(took, time.Since(start))
		if resp.StatusCode != http.StatusBadRequest {
			return fmt.Errorf("%s: status %d: %s", what, resp.StatusCode, b)
		}
		answer = string(b)
	}
	slices.Sort(took)
	now, peak := p.rss()
	fmt.Printf("  %s: %d KiB on the wire; answered 400 in %v (median of %d, fastest %v, slowest %v)\n",
		what, len(body)>>10, took[len(took)/2].Round(time.Microsecond), tries, took[0].Round(time.Microsecond), took[len(took)-1].Round(time.Microsecond))
	fmt.Printf("    peak RSS %s before, %s after (RSS now %s)\n    %s\n", mib(peakBefore), mib(peak), mib(now), answer)
	return nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
