// Command kafkabench measures the events/s spillway delivers to Kafka under
// scripts/bench's W1 load (POST /v1/batch, 100 events per request, 64
// connections, closed loop, --sync always), next to the webhook
// destination's rate in the same run.
//
// Kafka is franz-go's kfake, started in this process on loopback (three
// brokers, real protocol, records kept in memory); the webhook is
// scripts/benchtool/sink in count mode. Each destination gets its own
// spillway with a fresh spool and the same load; delivered events/s is
// spillway's own spillway_events_delivered_total over the load generator's
// measurement window. Everything shares the machine's cores, so compare
// the rates with each other, not with another machine.
//
//	go run ./scripts/kafkabench                  # 2 s warm-up + 10 s window per run
//	go run ./scripts/kafkabench --duration 20s --kafka-params 'concurrency=4;compression=lz4'
//
// With --keep, the work directory keeps each run's spillway log and its
// /metrics at the end of the load.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/spillwayhq/spillway/internal/procstat"
	"github.com/spillwayhq/spillway/scripts/internal/procs"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

type config struct {
	bin        string
	duration   time.Duration
	warmup     time.Duration
	conns      int
	batch      int
	partitions int
	kafkaExtra []string
	keep       bool
}

type result struct {
	name             string
	accepted         float64 // events/s answered 200
	delivered        float64 // events/s delivered in the window
	backlogAtEnd     float64 // received - delivered when the load stopped
	kafkaRecords     int64   // records on the topic after the run, kafka runs only
	deliveredInTotal float64
	// CPU seconds per 1000 events received, over the whole run: spillway,
	// this process (kfake; idle during webhook runs) and the load generator.
	cpuSpillway, cpuSelf, cpuLoadgen float64
}

func main() {
	var c config
	var extra string
	flag.StringVar(&c.bin, "bin", "", "directory holding spillway, loadgen and sink (default: build them)")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "measurement window per run")
	flag.DurationVar(&c.warmup, "warmup", 2*time.Second, "load before the window, not counted")
	flag.IntVar(&c.conns, "conns", 64, "load generator connections")
	flag.IntVar(&c.batch, "batch", 100, "events per /v1/batch request")
	flag.IntVar(&c.partitions, "partitions", 8, "partitions of the Kafka topic")
	flag.StringVar(&extra, "kafka-params", "", "';'-separated extra query strings, one more Kafka run each (e.g. 'concurrency=4;compression=lz4')")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory (spools, logs)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("kafkabench: ")
	for _, e := range strings.Split(extra, ";") {
		if e = strings.TrimSpace(e); e != "" {
			c.kafkaExtra = append(c.kafkaExtra, e)
		}
	}
	if err := run(c); err != nil {
		log.Fatal(err)
	}
}

func run(c config) error {
	work, err := os.MkdirTemp("", "spillway-kafkabench-")
	if err != nil {
		return err
	}
	if c.keep {
		log.Printf("work directory %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	if c.bin == "" {
		c.bin = filepath.Join(work, "bin")
		log.Printf("building spillway, loadgen and sink")
		if err := procs.BuildBenchTools(c.bin); err != nil {
			return err
		}
	}

	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(int32(c.partitions), "events"))
	if err != nil {
		return fmt.Errorf("start kfake: %w", err)
	}
	defer cluster.Close()
	brokers := strings.Join(cluster.ListenAddrs(), ",")

	sink, sinkAddr, err := startSink(c.bin, work)
	if err != nil {
		return err
	}
	defer stop(sink)

	runs := []struct{ name, dest string }{
		{"webhook", "hook=http://" + sinkAddr + "/"},
		{"kafka", "k=kafka://" + brokers + "/events"},
	}
	for _, e := range c.kafkaExtra {
		runs = append(runs, struct{ name, dest string }{"kafka?" + e, "k=kafka://" + brokers + "/events?" + e})
	}
	var results []result
	var before int64
	for i, r := range runs {
		log.Printf("run %d/%d: %s", i+1, len(runs), r.name)
		res, err := measure(c, work, fmt.Sprintf("run%d", i), r.name, r.dest)
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		if strings.HasPrefix(r.name, "kafka") {
			total, err := topicRecords(cluster, "events", c.partitions)
			if err != nil {
				return err
			}
			res.kafkaRecords = total - before
			before = total
		}
		results = append(results, res)
	}

	fmt.Printf("\nW1 load: /v1/batch x%d events, %d connections, closed loop, --sync always; %v window after %v warm-up\n",
		c.batch, c.conns, c.duration, c.warmup)
	fmt.Printf("%-24s %14s %15s %10s %12s %14s   %s\n", "destination", "accepted ev/s", "delivered ev/s", "deliv/acc", "backlog ev",
		"kafka records", "CPU ms/1k ev: spillway/kfake/loadgen")
	for _, r := range results {
		kr := "-"
		if r.kafkaRecords > 0 {
			kr = strconv.FormatInt(r.kafkaRecords, 10)
		}
		fmt.Printf("%-24s %14.0f %15.0f %10.2f %12.0f %14s   %.0f/%.0f/%.0f\n", r.name, r.accepted, r.delivered, r.delivered/r.accepted,
			r.backlogAtEnd, kr, 1000*r.cpuSpillway, 1000*r.cpuSelf, 1000*r.cpuLoadgen)
	}
	if len(results) >= 2 {
		fmt.Printf("kafka delivered / webhook delivered: %.2f\n", results[1].delivered/results[0].delivered)
	}
	return nil
}

// start runs a helper in its own process group, killed with us.
func start(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd.Start()
}

func stop(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func startSink(bin, work string) (*exec.Cmd, string, error) {
	cmd := exec.Command(filepath.Join(bin, "sink"), "--mode", "count")
	logf, err := os.Create(filepath.Join(work, "sink.log"))
	if err != nil {
		return nil, "", err
	}
	defer logf.Close()
	cmd.Stderr = logf
	addr, err := procs.SinkAddr(cmd, start)
	if err != nil {
		if cmd.Process != nil {
			stop(cmd)
		}
		return nil, "", err
	}
	return cmd, addr, nil
}

// sample is one reading of spillway's counters.
type sample struct {
	at                  time.Time
	received, delivered float64
}

// measure runs one spillway with dest under the load and reports rates
// over the load generator's window.
func measure(c config, work, tag, name, dest string) (result, error) {
	addr, err := procstat.FreeAddr()
	if err != nil {
		return result{}, err
	}
	logf, err := os.Create(filepath.Join(work, tag+".spillway.log"))
	if err != nil {
		return result{}, err
	}
	defer logf.Close()
	sp := exec.Command(filepath.Join(c.bin, "spillway"), "run", "--listen", addr, "--spool-dir", filepath.Join(work, tag+".spool"),
		"--sync", "always", "--shutdown-timeout", "2s", "--destination", dest)
	sp.Stdout, sp.Stderr = logf, logf
	if err := start(sp); err != nil {
		return result{}, err
	}
	defer stop(sp)
	base := "http://" + addr
	if err := procstat.WaitReady(context.Background(), base, 30*time.Second); err != nil {
		return result{}, fmt.Errorf("%w (log %s)", err, logf.Name())
	}

	var (
		mu      sync.Mutex
		samples []sample
		done    = make(chan struct{})
		wg      sync.WaitGroup
	)
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if s, err := counters(base); err == nil {
				mu.Lock()
				samples = append(samples, s)
				mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	lg := exec.Command(filepath.Join(c.bin, "loadgen"), "--url", base, "--endpoint", "/v1/batch",
		"--batch", strconv.Itoa(c.batch), "--conns", strconv.Itoa(c.conns),
		"--duration", c.duration.String(), "--warmup", c.warmup.String())
	lg.Stderr = io.Discard
	self0 := procstat.CPUTime(os.Getpid()).Seconds()
	sp0 := procstat.CPUTime(sp.Process.Pid).Seconds()
	out, err := lg.Output()
	close(done)
	wg.Wait()
	spCPU, selfCPU := procstat.CPUTime(sp.Process.Pid).Seconds()-sp0, procstat.CPUTime(os.Getpid()).Seconds()-self0
	var lgCPU float64
	if lg.ProcessState != nil {
		lgCPU = (lg.ProcessState.UserTime() + lg.ProcessState.SystemTime()).Seconds()
	}
	if err != nil {
		return result{}, fmt.Errorf("loadgen: %w", err)
	}
	var lr struct {
		WindowStartNs int64   `json:"window_start_ns"`
		WindowEndNs   int64   `json:"window_end_ns"`
		EventsPerS    float64 `json:"events_ok_per_s"`
	}
	if err := json.Unmarshal(out, &lr); err != nil {
		return result{}, fmt.Errorf("loadgen output %q: %w", out, err)
	}
	if resp, err := http.Get(base + "/metrics"); err == nil {
		if f, err := os.Create(filepath.Join(work, tag+".metrics")); err == nil {
			_, _ = io.Copy(f, resp.Body)
			f.Close()
		}
		resp.Body.Close()
	}
	from, to := time.Unix(0, lr.WindowStartNs), time.Unix(0, lr.WindowEndNs)
	d0, _, ok0 := at(samples, from)
	d1, r1, ok1 := at(samples, to)
	if !ok0 || !ok1 {
		return result{}, errors.New("no /metrics samples around the window")
	}
	k := 1.0
	if len(samples) > 1 {
		k = max(samples[len(samples)-1].received-samples[0].received, 1) / 1000
	}
	return result{
		cpuSpillway:      spCPU / k,
		cpuSelf:          selfCPU / k,
		cpuLoadgen:       lgCPU / k,
		name:             name,
		accepted:         lr.EventsPerS,
		delivered:        (d1 - d0) / to.Sub(from).Seconds(),
		backlogAtEnd:     r1 - d1,
		deliveredInTotal: d1,
	}, nil
}

// counters reads the received and delivered totals from /metrics.
func counters(base string) (sample, error) {
	s := sample{at: time.Now()}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var dst *float64
		switch {
		case strings.HasPrefix(line, "spillway_events_received_total"):
			dst = &s.received
		case strings.HasPrefix(line, "spillway_events_delivered_total"):
			dst = &s.delivered
		default:
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				*dst += v
			}
		}
	}
	return s, sc.Err()
}

// at interpolates the delivered and received counters at t.
func at(ss []sample, t time.Time) (delivered, received float64, ok bool) {
	for i := 1; i < len(ss); i++ {
		a, b := ss[i-1], ss[i]
		if b.at.Before(t) {
			continue
		}
		if a.at.After(t) {
			return a.delivered, a.received, true
		}
		f := float64(t.Sub(a.at)) / float64(b.at.Sub(a.at))
		return a.delivered + f*(b.delivered-a.delivered), a.received + f*(b.received-a.received), true
	}
	if len(ss) > 0 {
		last := ss[len(ss)-1]
		return last.delivered, last.received, true
	}
	return 0, 0, false
}

// topicRecords sums the topic's end offsets: every record Kafka holds.
func topicRecords(c *kfake.Cluster, topic string, partitions int) (int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	req := kmsg.NewPtrListOffsetsRequest()
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for p := range partitions {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = int32(p)
		rp.Timestamp = -1 // the end
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return 0, fmt.Errorf("list offsets: %w", err)
	}
	var total int64
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode != 0 {
				return 0, fmt.Errorf("list offsets %s/%d: error code %d", t.Topic, p.Partition, p.ErrorCode)
			}
			total += p.Offset
		}
	}
	return total, nil
}
