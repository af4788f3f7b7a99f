package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/cdc"
	"github.com/fluxkv/fluxkv/platform/tlsfiles"
)

// amqpTimeout bounds connecting to the broker and closing the connection.
const amqpTimeout = 10 * time.Second

func cdcCommand() *command {
	fs := newFlagSet("cdc")
	var (
		amqpURL  string
		queue    string
		binding  = "#"
		exchange = cdc.DefaultExchange
		amqpTLS  tlsfiles.Files
	)
	fs.StringVar(&amqpURL, "amqp-url", "", "AMQP `URL` of the RabbitMQ broker the nodes publish to (required)")
	fs.StringVar(&queue, "queue", "", "consume from this existing `queue`, taking the events off it; "+
		"by default a private queue is created for the command and deleted when it ends")
	fs.StringVar(&binding, "binding", binding, "routing `pattern` for the private queue; routing keys are <op>.<node-id>, "+
		"so put.# selects puts and #.n1 the events of node n1")
	fs.StringVar(&exchange, "exchange", exchange, "the `exchange` the nodes publish change events to")
	fs.StringVar(&amqpTLS.CA, "amqp-tls-ca", "", "CA bundle `file` (PEM) to verify RabbitMQ with, for an amqps:// --amqp-url (default: the system's roots)")
	fs.StringVar(&amqpTLS.Cert, "amqp-tls-cert", "", "client certificate `file` (PEM) to present to RabbitMQ; with --amqp-tls-key")
	fs.StringVar(&amqpTLS.Key, "amqp-tls-key", "", "private key `file` (PEM) of --amqp-tls-cert")
	c := &command{
		name: "cdc",
		args: "tail",
		summary: "Print the change events the nodes publish to RabbitMQ, one JSON object a line, until interrupted.\n" +
			"An event may appear twice (after a node or broker restart): its node_id and revision identify it.",
		flags: fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) != 1 || args[0] != "tail" {
			return usageError(env, c.name, "want: flux cdc tail --amqp-url URL")
		}
		if amqpURL == "" {
			return usageError(env, c.name, "--amqp-url is required (or set %s)", envName("amqp-url"))
		}
		if queue != "" && isSet(fs, "binding") {
			return usageError(env, c.name, "--binding applies to the private queue; bind --queue on the broker instead")
		}
		var tlsConfig *tls.Config
		if !amqpTLS.IsZero() {
			if !strings.HasPrefix(amqpURL, "amqps://") {
				return usageError(env, c.name, "--amqp-tls-* need an amqps:// --amqp-url")
			}
			files, err := tlsfiles.Load(amqpTLS)
			if err != nil {
				return usageError(env, c.name, "--amqp-tls-*: %v", err)
			}
			tlsConfig = files.Client()
		}
		if err := cdcTail(env, amqpURL, tlsConfig, exchange, queue, binding); err != nil {
			fmt.Fprintf(env.stderr, "flux cdc: %v\n", err)
			return exitError
		}
		return exitOK
	}
	return c
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// cdcTail prints the events of queue, or of a private queue bound to
// exchange with binding, until env.ctx ends.
func cdcTail(env *environment, amqpURL string, tlsConfig *tls.Config, exchange, queue, binding string) error {
	ctx := env.ctx
	props := amqp.NewConnectionProperties()
	props["connection_name"] = "flux cdc tail"
	conn, err := amqp.DialConfig(amqpURL, amqp.Config{Dial: dialAMQP(ctx), Properties: props, TLSClientConfig: tlsConfig})
	if err != nil {
		return fmt.Errorf("connect to the broker: %w", err)
	}
	defer func() { _ = conn.CloseDeadline(time.Now().Add(amqpTimeout)) }()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if queue == "" {
		// Declared here too, so that tail may start before any node.
		if err := cdc.DeclareExchange(ch, exchange); err != nil {
			return fmt.Errorf("declare exchange %q: %w", exchange, err)
		}
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			return fmt.Errorf("declare queue: %w", err)
		}
		if err := ch.QueueBind(q.Name, binding, exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue to %q: %w", exchange, err)
		}
		queue = q.Name
		fmt.Fprintf(env.stderr, "flux cdc: tailing exchange %q, binding %q\n", exchange, binding)
	} else {
		fmt.Fprintf(env.stderr, "flux cdc: tailing queue %q\n", queue)
	}
	// Bounded prefetch: the broker keeps what the terminal has not printed.
	if err := ch.Qos(256, 0, false); err != nil {
		return err
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %q: %w", queue, err)
	}
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-closed:
			return closedError(e)
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("the broker ended the subscription (queue deleted?)")
			}
			if line, err := eventJSON(d); err != nil {
				fmt.Fprintf(env.stderr, "flux cdc: skipping message %q: %v\n", d.MessageId, err)
			} else {
				fmt.Fprintf(env.stdout, "%s\n", line)
			}
			// Acknowledged after printing, so an interrupted tail leaves
			// nothing unprinted taken off a named queue.
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("acknowledge: %w", err)
			}
		}
	}
}

func closedError(e *amqp.Error) error {
	if e == nil {
		return errors.New("connection to the broker closed")
	}
	return fmt.Errorf("connection to the broker lost: %w", e)
}

// eventJSON is the ChangeEvent in d as one line of JSON.
func eventJSON(d amqp.Delivery) ([]byte, error) {
	if d.Type != "" && d.Type != cdc.MessageType {
		return nil, fmt.Errorf("type %q is not %s", d.Type, cdc.MessageType)
	}
	var ev cdcv1.ChangeEvent
	if err := proto.Unmarshal(d.Body, &ev); err != nil {
		return nil, err
	}
	return protojson.MarshalOptions{Multiline: false}.Marshal(&ev)
}

// dialAMQP dials like amqp.DefaultDial but gives up when ctx ends.
func dialAMQP(ctx context.Context) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: amqpTimeout}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// Heartbeats start only after the handshake; the library clears this.
		if err := c.SetDeadline(time.Now().Add(amqpTimeout)); err != nil {
			_ = c.Close()
			return nil, err
		}
		return c, nil
	}
}
