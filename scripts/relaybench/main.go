// Command relaybench measures spillway as a Kafka relay (--source), next to
// spillway's HTTP ingest in the same run, and the pause a rebalance costs.
//
//  1. HTTP: one spillway under scripts/bench's W1 load (POST /v1/batch, 100
//     events per request, 64 connections, closed loop, --sync always),
//     delivering to the counting sink: events/s accepted and delivered, and
//     spillway's CPU per event.
//  2. Fill: a sidecar spillway under the same load for --fill, delivering to
//     a Kafka topic (franz-go's kfake, in this process, three brokers on
//     loopback), so that the topic holds what sidecars really write.
//  3. Relay: one relay spillway (--listen ” --source kafka://...) drains
//     that topic into its spool and delivers it to the sink: events/s stored
//     and delivered, and its CPU per event.
//  4. Rebalance: a sidecar keeps producing at --rate; two relays in one group
//     join, leave (SIGTERM) and die (SIGKILL) in turn; from their logs, how
//     long the partitions that move go unconsumed.
//
// Everything shares the machine's cores: compare the runs with each other.
//
//	go run ./scripts/relaybench
//	go run ./scripts/relaybench --duration 20s --session-timeout 10s
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillwayhq/spillway/internal/procstat"
	"github.com/spillwayhq/spillway/scripts/internal/procs"
)

type config struct {
	bin            string
	duration, fill time.Duration
	conns, batch   int
	partitions     int
	rate           int
	sessionTimeout time.Duration
	keep           bool
	profile        string
	relayMemLimit  string
	skipHTTP       bool
	skipRebalance  bool
}

type bench struct {
	config
	work    string
	brokers string
	sink    string // host:port
	ps      procs.Set
}

func main() {
	var c config
	flag.StringVar(&c.bin, "bin", "", "directory holding spillway, loadgen and sink (default: build them)")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "HTTP measurement window")
	flag.DurationVar(&c.fill, "fill", 5*time.Second, "how long the sidecar fills the topic")
	flag.IntVar(&c.conns, "conns", 64, "load generator connections")
	flag.IntVar(&c.batch, "batch", 100, "events per /v1/batch request")
	flag.IntVar(&c.partitions, "partitions", 6, "partitions of the topic")
	flag.IntVar(&c.rate, "rate", 5000, "events/s produced while relays rebalance")
	flag.DurationVar(&c.sessionTimeout, "session-timeout", 6*time.Second, "the relays' session_timeout (kfake's minimum is 6s, as Kafka's default)")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory (spools, logs)")
	flag.StringVar(&c.relayMemLimit, "relay-gomemlimit", "", "GOMEMLIMIT of the relays (default: spillway's own, 45 MiB)")
	flag.BoolVar(&c.skipHTTP, "skip-http", false, "skip the HTTP run (to try relay settings)")
	flag.BoolVar(&c.skipRebalance, "skip-rebalance", false, "skip the rebalance runs")
	flag.StringVar(&c.profile, "profile", "", "write a CPU profile of the relay's first 3 s of draining to this file")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("relaybench: ")
	b := &bench{config: c}
	b.ps.Tag = "relaybench"
	err := b.run()
	b.ps.StopAll(5 * time.Second)
	if err != nil {
		log.Fatal(err)
	}
}

func (b *bench) run() error {
	var err error
	if b.work, err = os.MkdirTemp("", "spillway-relaybench-"); err != nil {
		return err
	}
	if b.keep {
		log.Printf("work directory %s", b.work)
	} else {
		defer os.RemoveAll(b.work)
	}
	if b.bin == "" {
		b.bin = filepath.Join(b.work, "bin")
		log.Printf("building spillway, loadgen and sink")
		if err := procs.BuildBenchTools(b.bin); err != nil {
			return err
		}
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(int32(b.partitions), "events"))
	if err != nil {
		return fmt.Errorf("start kfake: %w", err)
	}
	defer cluster.Close()
	b.brokers = strings.Join(cluster.ListenAddrs(), ",")
	if err := b.startSink(); err != nil {
		return err
	}

	h := rates{taken: 1, delivered: 1, cpu: 1}
	if !b.skipHTTP {
		log.Printf("1/4 HTTP ingest, W1 for %v", b.duration)
		if h, err = b.httpRun(); err != nil {
			return err
		}
	}
	log.Printf("2/4 a sidecar fills the topic for %v", b.fill)
	n, err := b.fillTopic()
	if err != nil {
		return err
	}
	log.Printf("3/4 a relay drains %.0f records", n)
	r, err := b.relayRun(n)
	if err != nil {
		return err
	}
	var pauses []pause
	if !b.skipRebalance {
		log.Printf("4/4 rebalances under %d events/s", b.rate)
		if pauses, err = b.rebalances(); err != nil {
			return err
		}
	}

	fmt.Printf("\n%-34s %14s %15s %22s\n", "", "taken ev/s", "delivered ev/s", "CPU ms/1k ev (kfake)")
	fmt.Printf("%-34s %14.0f %15.0f %22.1f\n", "HTTP ingest (W1, 64 conns)", h.taken, h.delivered, 1e6*h.cpu)
	fmt.Printf("%-34s %14.0f %15.0f %15.1f (%.1f)\n", fmt.Sprintf("relay draining %.0f records", n), r.taken, r.delivered, 1e6*r.cpu, 1e6*r.cpuKfake)
	fmt.Printf("relay / HTTP: taken %.2f, delivered %.2f, CPU per event %.2f\n", r.taken/h.taken, r.delivered/h.delivered, r.cpu/h.cpu)
	fmt.Printf("relay peak RSS %d MiB; HTTP spillway peak RSS %d MiB\n", r.rssKiB>>10, h.rssKiB>>10)
	fmt.Printf("\nrebalances, 2 relays, %d partitions, session_timeout=%v, %d events/s:\n", b.partitions, b.sessionTimeout, b.rate)
	for _, p := range pauses {
		fmt.Printf("  %-58s %8.0f ms\n", p.what, float64(p.d.Microseconds())/1000)
	}
	return nil
}

func (b *bench) startSink() error {
	var err error
	b.sink, err = procs.SinkAddr(exec.Command(filepath.Join(b.bin, "sink"), "--mode", "count"), func(cmd *exec.Cmd) error {
		_, err := b.ps.Start("sink", cmd)
		return err
	})
	return err
}

// spillway starts one spillway, logging JSON to a file, and waits until
// its admin address is ready. A relay has no HTTP API: its admin listener
// takes the address.
func (b *bench) spillway(tag string, relay bool, args ...string) (*procs.Proc, string, string, error) {
	addr, err := procstat.FreeAddr()
	if err != nil {
		return nil, "", "", err
	}
	logPath := filepath.Join(b.work, tag+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, "", "", err
	}
	defer logf.Close()
	args = append([]string{"run", "--listen", addr, "--spool-dir", filepath.Join(b.work, tag+".spool"), "--log-format", "json",
		"--shutdown-timeout", "2s"}, args...)
	cmd := exec.Command(filepath.Join(b.bin, "spillway"), args...)
	if relay {
		cmd.Args = append(cmd.Args, "--listen", "", "--admin-listen", addr)
		if b.relayMemLimit != "" {
			cmd.Env = append(os.Environ(), "GOMEMLIMIT="+b.relayMemLimit)
		}
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := b.ps.Start(tag, cmd)
	if err != nil {
		return nil, "", "", err
	}
	base := "http://" + addr
	if err := procstat.WaitReady(context.Background(), base, 30*time.Second); err != nil {
		return nil, "", "", fmt.Errorf("%s: %w (log %s)", tag, err, logPath)
	}
	return p, base, logPath, nil
}

type rates struct {
	taken, delivered float64
	cpu, cpuKfake    float64 // CPU seconds per event
	rssKiB           int64
}

func (b *bench) loadgen(base string, duration time.Duration, rate int) *exec.Cmd {
	return exec.Command(filepath.Join(b.bin, "loadgen"), "--url", base, "--endpoint", "/v1/batch",
		"--batch", strconv.Itoa(b.batch), "--conns", strconv.Itoa(b.conns), "--rate", strconv.Itoa(rate),
		"--duration", duration.String(), "--warmup", "2s")
}

func (b *bench) httpRun() (rates, error) {
	p, base, _, err := b.spillway("http", false, "--destination", "hook=http://"+b.sink+"/")
	if err != nil {
		return rates{}, err
	}
	defer p.Stop(5 * time.Second)
	cpu0 := procstat.CPUTime(p.Pid())
	d0, _ := metric(base, "spillway_events_delivered_total", "")
	t0 := time.Now()
	out, err := b.loadgen(base, b.duration, 0).Output()
	if err != nil {
		return rates{}, fmt.Errorf("loadgen: %w", err)
	}
	elapsed := time.Since(t0)
	cpu := procstat.CPUTime(p.Pid()) - cpu0
	received, _ := metric(base, "spillway_events_received_total", "")
	d1, _ := metric(base, "spillway_events_delivered_total", "")
	rss, _ := procstat.StatusKiB(p.Pid(), "VmHWM")
	var lr struct {
		EventsPerS float64 `json:"events_ok_per_s"`
	}
	if err := json.Unmarshal(out, &lr); err != nil {
		return rates{}, fmt.Errorf("loadgen output %q: %w", out, err)
	}
	return rates{taken: lr.EventsPerS, delivered: (d1 - d0) / elapsed.Seconds(), cpu: cpu.Seconds() / received, rssKiB: rss}, nil
}

// fillTopic has a sidecar write W1's events to the topic, and returns how
// many records it holds once the sidecar delivered them all.
func (b *bench) fillTopic() (float64, error) {
	p, base, _, err := b.spillway("fill", false, "--destination", "k=kafka://"+b.brokers+"/events")
	if err != nil {
		return 0, err
	}
	defer p.Stop(5 * time.Second)
	if out, err := b.loadgen(base, b.fill, 0).Output(); err != nil {
		return 0, fmt.Errorf("loadgen: %w: %s", err, out)
	}
	received, _ := metric(base, "spillway_events_received_total", "")
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if d, _ := metric(base, "spillway_events_delivered_total", ""); d >= received {
			return received, nil
		}
	}
	return 0, errors.New("the sidecar did not deliver the fill to Kafka within 2 minutes")
}

// relayRun drains the topic's total records through a relay. Rates and CPU
// are over the n records stored after the first sample that saw any.
func (b *bench) relayRun(total float64) (rates, error) {
	n := total
	t0 := time.Now()
	args := []string{"--source", "kafka://" + b.brokers + "/events?group=drain", "--destination", "hook=http://" + b.sink + "/"}
	var pprofAddr string
	if b.profile != "" {
		pprofAddr, _ = procstat.FreeAddr()
		args = append(args, "--pprof-listen", pprofAddr)
	}
	p, base, _, err := b.spillway("relay", true, args...)
	if err != nil {
		return rates{}, err
	}
	defer p.Stop(5 * time.Second)
	if b.profile != "" {
		go func() {
			if err := saveProfile("http://"+pprofAddr+"/debug/pprof/profile?seconds=3", b.profile); err != nil {
				log.Printf("profile: %v", err)
			}
		}()
	}
	// CPU from the first record stored: joining the group and opening
	// the spool are not per event.
	var firstStored, allStored time.Time
	var cpu0, self0 time.Duration
	deadline := time.Now().Add(5 * time.Minute)
	for ; time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		stored, _ := metric(base, "spillway_source_records_total", `outcome="stored"`)
		if stored > 0 && firstStored.IsZero() {
			firstStored = time.Now()
			cpu0, self0 = procstat.CPUTime(p.Pid()), procstat.CPUTime(os.Getpid())
			n -= stored
		}
		if !firstStored.IsZero() && stored >= total && allStored.IsZero() {
			allStored = time.Now()
		}
		if d, _ := metric(base, "spillway_events_delivered_total", ""); !firstStored.IsZero() && d >= total {
			break
		}
	}
	if allStored.IsZero() {
		return rates{}, errors.New("the relay did not store every record within 5 minutes")
	}
	allDelivered := time.Now()
	cpu := procstat.CPUTime(p.Pid()) - cpu0
	self := procstat.CPUTime(os.Getpid()) - self0
	rss, _ := procstat.StatusKiB(p.Pid(), "VmHWM")
	log.Printf("relay: first record stored %v after its start, all %v later, all delivered %v after the first",
		firstStored.Sub(t0).Round(time.Millisecond), allStored.Sub(firstStored).Round(time.Millisecond), allDelivered.Sub(firstStored).Round(time.Millisecond))
	return rates{
		taken:     n / allStored.Sub(firstStored).Seconds(),
		delivered: n / allDelivered.Sub(firstStored).Seconds(),
		cpu:       cpu.Seconds() / n,
		cpuKfake:  self.Seconds() / n,
		rssKiB:    rss,
	}, nil
}

type pause struct {
	what string
	d    time.Duration
}

// rebalances moves partitions between two relays under a steady stream and
// reads, from their logs, when each gave partitions up and took them.
func (b *bench) rebalances() ([]pause, error) {
	side, sideBase, _, err := b.spillway("stream", false, "--destination", "k=kafka://"+b.brokers+"/events?flush=10ms")
	if err != nil {
		return nil, err
	}
	defer side.Stop(5 * time.Second)
	lg := b.loadgen(sideBase, 10*time.Minute, b.rate)
	if _, err := b.ps.Start("loadgen", lg); err != nil {
		return nil, err
	}
	defer func() { _ = lg.Process.Signal(syscall.SIGTERM) }()

	src := fmt.Sprintf("kafka://%s/events?group=rebalance&session_timeout=%v", b.brokers, b.sessionTimeout)
	relay := func(tag string) (*procs.Proc, string, error) {
		p, _, logPath, err := b.spillway(tag, true, "--source", src, "--destination", "hook=http://"+b.sink+"/")
		return p, logPath, err
	}
	r1, log1, err := relay("rb1")
	if err != nil {
		return nil, err
	}
	if _, err := waitLog(log1, "partitions assigned", time.Time{}); err != nil {
		return nil, err
	}
	time.Sleep(time.Second)

	var out []pause
	// A relay joins: its share is revoked from the first, then assigned to it.
	joined := time.Now()
	r2, log2, err := relay("rb2")
	if err != nil {
		return nil, err
	}
	assigned, err := waitLog(log2, "partitions assigned", joined)
	if err != nil {
		return nil, err
	}
	revoked, err := waitLog(log1, "partitions revoked", joined)
	if err != nil {
		return nil, err
	}
	out = append(out,
		pause{"join: new relay started -> its partitions assigned", assigned.Sub(joined)},
		pause{"join: moved partitions revoked -> assigned to the new one", assigned.Sub(revoked)})
	time.Sleep(2 * time.Second)

	// It leaves with SIGTERM: it commits and leaves the group.
	left := time.Now()
	r2.Signal(syscall.SIGTERM)
	if assigned, err = waitLog(log1, "partitions assigned", left); err != nil {
		return nil, err
	}
	out = append(out, pause{"leave (SIGTERM): signal -> partitions assigned to the other", assigned.Sub(left)})
	<-r2.Done()
	time.Sleep(time.Second)

	// It comes back, then the first dies with SIGKILL.
	r2, log2, err = relay("rb2b")
	if err != nil {
		return nil, err
	}
	if _, err := waitLog(log2, "partitions assigned", time.Time{}); err != nil {
		return nil, err
	}
	time.Sleep(2 * time.Second)
	killed := time.Now()
	r1.Kill()
	if assigned, err = waitLog(log2, "partitions assigned", killed); err != nil {
		return nil, err
	}
	out = append(out, pause{"death (SIGKILL): kill -> partitions assigned to the other", assigned.Sub(killed)})
	r2.Stop(5 * time.Second)
	return out, nil
}

// waitLog waits for a JSON log line with msg logged after since, and
// returns its time.
func waitLog(path, msg string, since time.Time) (time.Time, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for ; time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile(path)
		if err != nil {
			return time.Time{}, err
		}
		for line := range strings.Lines(string(b)) {
			var l struct {
				Time time.Time
				Msg  string
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == msg && l.Time.After(since) {
				return l.Time, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("%s: no %q within 2 minutes", path, msg)
}

// metric sums the samples of name whose labels contain labels.
func metric(base, name, labels string) (float64, error) {
	req, err := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	// Uncompressed: gzip would cost the measured process more than the
	// scrape itself.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') || !strings.Contains(rest, labels) {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				sum += v
			}
		}
	}
	return sum, sc.Err()
}

func saveProfile(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
