package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// kafkaTopic reads a topic from the start in the background and records
// every messageId header it sees, duplicates counted.
type kafkaTopic struct {
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	ids     map[string]int
	records int
}

func readTopic(t *testing.T, c *kfake.Cluster, topic string) *kafkaTopic {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &kafkaTopic{cl: cl, cancel: cancel, done: make(chan struct{}), ids: map[string]int{}}
	go func() {
		defer close(k.done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			k.mu.Lock()
			fs.EachRecord(func(r *kgo.Record) {
				k.records++
				for _, h := range r.Headers {
					if h.Key == "messageId" {
						k.ids[string(h.Value)]++
					}
				}
			})
			k.mu.Unlock()
		}
	}()
	t.Cleanup(k.close)
	return k
}

func (k *kafkaTopic) close() {
	k.cancel()
	<-k.done
	k.cl.Close()
}

func (k *kafkaTopic) has(id string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ids[id] > 0
}

func (k *kafkaTopic) counts() (unique, records int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.ids), k.records
}

// TestKafkaKilledProcessLosesNoAcknowledgedEvent runs the real binary
// against an in-process Kafka (kfake, real protocol on loopback), SIGKILLs
// it at a random moment while it ingests and produces under concurrent
// load, restarts it on the same spool, and checks that every event
// answered 200 reaches the topic.
func TestKafkaKilledProcessLosesNoAcknowledgedEvent(t *testing.T) {
	t.Parallel()
	cycles := 3
	if testing.Short() {
		cycles = 1
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(6, "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic := readTopic(t, c, "events")
	dir := t.TempDir()
	dest := "k=kafka://" + strings.Join(c.ListenAddrs(), ",") + "/events?batch_events=200&flush=10ms&backoff_max=1s"
	args := []string{"--spool-dir", dir, "--destination", dest}

	var mu sync.Mutex
	acked := map[string]bool{}
	for cycle := 0; cycle < cycles; cycle++ {
		p := startSpillway(t, "", nil, args...)
		ctx, cancel := context.WithCancel(t.Context())
		wg := postAcked(ctx, p.url(), fmt.Sprintf("c%d", cycle), 8, 50, &mu, acked)
		// Let this process's production to Kafka be under way before the
		// kill (after a restart, re-sent records count too).
		_, before := topic.counts()
		testkit.Eventually(t, func() bool { _, n := topic.counts(); return n > before }, "records produced by this process")
		time.Sleep(time.Duration(100+rng.IntN(600)) * time.Millisecond)
		p.kill()
		cancel()
		wg.Wait()
		u, _ := topic.counts()
		mu.Lock()
		t.Logf("cycle %d: killed with %d events acknowledged in all, %d in Kafka so far", cycle, len(acked), u)
		mu.Unlock()
	}

	p := startSpillway(t, "", nil, args...)
	waitForAll(t, "in Kafka", &mu, acked, topic.has)
	unique, records := topic.counts()
	t.Logf("%d acknowledged, %d unique in Kafka, %d duplicates (re-sent after a kill)", len(acked), unique, records-unique)
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
}
