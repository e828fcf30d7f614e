// Command h2spec runs the h2spec HTTP/2 conformance suite (its packages are in
// shared/tools/h2spec/src, beside the repository) against one server. This is partgate's own
// entry point to those packages: the copy of the suite has its test packages but not its
// command, and this one needs nothing beyond the standard library's flag parsing.
//
//	h2spec -h 127.0.0.1 -p 8080 [-t -k] [-j report.xml] [-o 2] [SECTION ...]
//
// Exit status: 0 when every case passed, 1 when some failed, 2 when the run could not happen.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/summerwind/h2spec"
	"github.com/summerwind/h2spec/config"
)

func main() {
	c := &config.Config{}
	flag.StringVar(&c.Host, "h", "127.0.0.1", "host of the server under test")
	flag.IntVar(&c.Port, "p", 0, "port of the server under test (default 80, or 443 with -t)")
	flag.StringVar(&c.Path, "P", "/", "path the test requests use")
	timeout := flag.Int("o", 2, "seconds to wait for each expected answer")
	flag.IntVar(&c.MaxHeaderLen, "max-header-length", 4000, "length of each dummy header value")
	flag.StringVar(&c.JUnitReport, "j", "", "write a JUnit XML report to this file")
	flag.BoolVar(&c.TLS, "t", false, "connect with TLS (ALPN h2)")
	flag.BoolVar(&c.Insecure, "k", false, "do not verify the server's certificate")
	flag.BoolVar(&c.Strict, "S", false, "strict mode: also run the cases for SHOULD requirements")
	flag.BoolVar(&c.Verbose, "v", false, "print the frames exchanged")
	flag.Parse()
	c.Timeout = time.Duration(*timeout) * time.Second
	// Sections to run, e.g. "http2/5.1" or "hpack"; none: every case.
	c.Sections = flag.Args()
	if c.Port == 0 {
		c.Port = 80
		if c.TLS {
			c.Port = 443
		}
	}
	passed, err := h2spec.Run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if !passed {
		os.Exit(1)
	}
}
