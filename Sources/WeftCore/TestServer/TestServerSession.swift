/// One TCP connection of the pods' test server, as a state machine without I/O: the shell
/// (WeftOS `EchoServer.serveTCP`) feeds it what the socket reads, tells it when the window
/// closes and when the client ends its side, and sends what it returns.
///
/// The server lets the client speak first. Bytes that start an HTTP request line (a method of
/// capital letters, then a space) make the connection HTTP (`HTTPEcho`); anything else — or
/// nothing within `window` — gets the raw contract: "NAME CLIENT-ADDRESS\n", then every byte
/// echoed (what arrived before the decision first) until the client closes.
public struct TestServerSession: Sendable {
    /// How long a silent client waits for its greeting. HTTP clients (curl, Python, Go) write
    /// their request straight after connect, so on an idle machine it arrives within a
    /// millisecond; a second leaves room for a client descheduled between connect and write on
    /// a machine loaded far past its cores (CI), and is still short for a person at nc.
    /// `weft probe` sends a newline at once and so never waits it out.
    public static let window: Duration = .seconds(1)

    /// Longest method the sniffer waits for before deciding the client is not speaking HTTP.
    static let longestMethod = 20

    public struct Output: Sendable, Equatable {
        public var bytes: [UInt8] = []
        /// Close once `bytes` are sent.
        public var close = false
        public init(bytes: [UInt8] = [], close: Bool = false) { self.bytes = bytes; self.close = close }
    }

    public enum FirstBytes: Sendable, Equatable { case http, raw, undecided }

    private enum Mode: Sendable {
        case waiting(heard: [UInt8])
        case echo
        case http(HTTPRequestParser)
        case closed
    }

    public let context: TestServerContext
    private var mode = Mode.waiting(heard: [])

    public init(context: TestServerContext) { self.context = context }

    /// True until the session knows which protocol the client speaks: the window runs meanwhile.
    public var isWaiting: Bool { if case .waiting = mode { return true }; return false }

    /// What the first bytes of a connection say, however few have arrived.
    public static func classify(_ heard: some Collection<UInt8>) -> FirstBytes {
        for (i, b) in heard.enumerated() {
            if (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b) { if i >= longestMethod { return .raw }; continue }
            return b == UInt8(ascii: " ") && i > 0 ? .http : .raw
        }
        return .undecided
    }

    public mutating func received(_ bytes: [UInt8]) -> Output {
        switch mode {
        case .waiting(let heard):
            let all = heard + bytes
            switch Self.classify(all) {
            case .undecided: mode = .waiting(heard: all); return Output()
            case .raw: mode = .echo; return Output(bytes: context.greeting + all)
            case .http:
                var parser = HTTPRequestParser()
                let events = parser.receive(all)
                mode = .http(parser)
                return answer(events)
            }
        case .echo: return Output(bytes: bytes)
        case .http(var parser):
            mode = .closed // not left holding a second copy of the parser's buffer
            let events = parser.receive(bytes)
            mode = .http(parser)
            return answer(events)
        case .closed: return Output()
        }
    }

    /// The window has passed with the client silent (or still in the middle of a method).
    public mutating func windowClosed() -> Output {
        guard case .waiting(let heard) = mode else { return Output() }
        mode = .echo
        return Output(bytes: context.greeting + heard)
    }

    /// The client has closed its side: a raw client still gets its greeting and echo; an
    /// unfinished HTTP request is dropped. Then the connection closes.
    public mutating func inputEnded() -> Output {
        defer { mode = .closed }
        if case .waiting(let heard) = mode { return Output(bytes: context.greeting + heard, close: true) }
        return Output(close: true)
    }

    private mutating func answer(_ events: [HTTPRequestParser.Event]) -> Output {
        var out = Output()
        for e in events {
            switch e {
            case .continueExpected: out.bytes += HTTPEcho.interimContinue
            case .request(let r):
                out.bytes += HTTPEcho.response(to: r, context: context)
                if !r.keepsAlive { out.close = true }
            case .invalid(let status, let reason):
                out.bytes += HTTPEcho.refusal(status, reason: reason, context: context)
                out.close = true
            }
            if out.close { mode = .closed; break }
        }
        return out
    }
}
