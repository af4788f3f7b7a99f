package rpcserver

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// countingConn counts the reads that reach the connection.
type countingConn struct {
	net.Conn
	reads int
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads++
	return c.Conn.Read(p)
}

// pipe returns a buffered connection reading what the returned writer
// writes; both are closed when the test ends.
func pipe(t *testing.T) (*bufferedConn, *countingConn, net.Conn) {
	t.Helper()
	server, client := net.Pipe()
	counted := &countingConn{Conn: server}
	c := &bufferedConn{Conn: counted}
	t.Cleanup(func() {
		c.Close()
		client.Close()
	})
	return c, counted, client
}

func TestBufferedConnReleasesBufferWhenDrained(t *testing.T) {
	c, counted, client := pipe(t)
	frames := bytes.Repeat([]byte("0123456789"), 30) // three 100-byte "frames"
	go func() { _, _ = client.Write(frames) }()

	head := make([]byte, 9)
	if _, err := io.ReadFull(c, head); err != nil {
		t.Fatal(err)
	}
	if c.buf == nil {
		t.Fatal("no buffer while 291 bytes are unread")
	}
	rest := make([]byte, len(frames)-len(head))
	if _, err := io.ReadFull(c, rest); err != nil {
		t.Fatal(err)
	}
	if got := append(head, rest...); !bytes.Equal(got, frames) {
		t.Fatalf("read %q, want %q", got, frames)
	}
	// One read of the connection fetched all three frames.
	if counted.reads != 1 {
		t.Errorf("%d reads of the connection for one write, want 1", counted.reads)
	}
	if c.buf != nil {
		t.Error("the connection holds a buffer with nothing left to read")
	}

	// A read as large as the buffer goes straight to the connection.
	go func() { _, _ = client.Write(frames) }()
	big := make([]byte, readBufferSize)
	n, err := c.Read(big)
	if err != nil || n != len(frames) || c.buf != nil {
		t.Errorf("large read: %d bytes, %v, buffer held %v; want %d, nil, false", n, err, c.buf != nil, len(frames))
	}

	// The error that ends the connection comes after the data.
	client.Close()
	if n, err := c.Read(head); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("after close: %d, %v; want 0, EOF", n, err)
	}
	if c.buf != nil {
		t.Error("a closed connection holds a buffer")
	}
}

// TestBufferedConnRandomChunks writes a stream in chunks of random sizes,
// some larger than the buffer, and reads it with reads of random sizes:
// every byte must arrive once, in order.
func TestBufferedConnRandomChunks(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, seed))
		want := make([]byte, 1<<20)
		for i := range want {
			want[i] = byte(rng.Uint32())
		}
		c, _, client := pipe(t)
		sizes := func(rng *rand.Rand) int {
			switch rng.IntN(4) {
			case 0:
				return 1 + rng.IntN(16)
			case 1:
				return readBufferSize + rng.IntN(readBufferSize)
			default:
				return 1 + rng.IntN(readBufferSize)
			}
		}
		writer := rand.New(rand.NewPCG(seed, ^seed))
		go func() {
			defer client.Close()
			for rest := want; len(rest) > 0; {
				n := min(sizes(writer), len(rest))
				if _, err := client.Write(rest[:n]); err != nil {
					return
				}
				rest = rest[n:]
			}
		}()
		var got []byte
		for {
			p := make([]byte, sizes(rng))
			n, err := c.Read(p)
			got = append(got, p[:n]...)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("seed %d: read %d bytes that differ from the %d written", seed, len(got), len(want))
		}
		if c.buf != nil {
			t.Fatalf("seed %d: buffer held after the stream ended", seed)
		}
	}
}
