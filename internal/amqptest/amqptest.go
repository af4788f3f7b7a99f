// Package amqptest is what tests need to run against a real RabbitMQ: the
// broker's URL, exchange and queue names of a test's own that are deleted
// when it ends, a TCP proxy that can cut the broker off, and a consumer that
// checks Flux-KV's CDC delivery guarantee (each revision of a node exactly
// once after dedup by message id, in revision order).
//
// Every helper takes the test's testing.TB and registers its own cleanup.
package amqptest

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"regexp"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker of the tests when FLUX_AMQP_URL is not set: a
// local RabbitMQ with its default account, as CI runs it.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// dialTimeout keeps a missing broker from holding a test for the
// operating system's connect timeout.
const dialTimeout = 2 * time.Second

// URL returns the broker the tests use, FLUX_AMQP_URL or DefaultURL, after
// checking that it accepts a connection. When it does not, the test is
// skipped, except when the environment variable CI is set: there the broker
// is part of the build, and the test fails instead, so that a broken CI
// set-up cannot pass by skipping every broker test.
func URL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("FLUX_AMQP_URL")
	if u == "" {
		u = DefaultURL
	}
	conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(dialTimeout)})
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("RabbitMQ at FLUX_AMQP_URL (default 127.0.0.1:5672) is required in CI: %v", err)
		}
		t.Skipf("RabbitMQ unreachable, set FLUX_AMQP_URL or start it: %v", err)
	}
	_ = conn.Close()
	return u
}

// WithHost returns brokerURL with its host:port replaced by hostport, to
// reach the same broker through a proxy. It fails the test if brokerURL
// does not parse.
func WithHost(t testing.TB, brokerURL, hostport string) string {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatalf("broker URL does not parse: %v", err)
	}
	u.Host = hostport
	return u.String()
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// maxTestName keeps names well under RabbitMQ's 255-byte limit however
// deeply subtests nest.
const maxTestName = 120

// Name returns a name of the test's own for an exchange or a queue: the
// test's name made safe, with a random suffix so that runs sharing a broker
// (and -count=N) never meet. Nothing is declared or deleted; Exchange and
// Queue also clean up.
func Name(t testing.TB) string {
	t.Helper()
	name := unsafeName.ReplaceAllString(t.Name(), "_")
	if len(name) > maxTestName {
		name = name[:maxTestName]
	}
	return fmt.Sprintf("flux.cdc.test.%s.%08x", name, rand.Uint32())
}

// Exchange returns an exchange name of the test's own. Whoever declares the
// exchange, it is deleted when the test ends.
func Exchange(t testing.TB, brokerURL string) string {
	t.Helper()
	name := Name(t)
	t.Cleanup(func() {
		cleanUp(t, brokerURL, func(ch *amqp.Channel) error {
			if err := ch.ExchangeDelete(name, false, false); err != nil {
				return fmt.Errorf("delete exchange %s: %w", name, err)
			}
			return nil
		})
	})
	return name
}

// Queue returns a queue name of the test's own, ending in ".q". Whoever
// declares the queue, it is deleted with the messages left in it when the
// test ends; a durable queue left behind would collect every event of
// every later run bound to the same exchange.
func Queue(t testing.TB, brokerURL string) string {
	t.Helper()
	name := Name(t) + ".q"
	t.Cleanup(func() {
		cleanUp(t, brokerURL, func(ch *amqp.Channel) error {
			if _, err := ch.QueueDelete(name, false, false, false); err != nil {
				return fmt.Errorf("delete queue %s: %w", name, err)
			}
			return nil
		})
	})
	return name
}

// cleanUp runs fn on a channel of its own: a failed delete closes the
// channel it ran on.
func cleanUp(t testing.TB, brokerURL string, fn func(*amqp.Channel) error) {
	t.Helper()
	conn, err := amqp.DialConfig(brokerURL, amqp.Config{Dial: amqp.DefaultDial(dialTimeout)})
	if err != nil {
		t.Errorf("clean up: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("clean up: %v", err)
		return
	}
	if err := fn(ch); err != nil {
		t.Errorf("clean up: %v", err)
	}
}
