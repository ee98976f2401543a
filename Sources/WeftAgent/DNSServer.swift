import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import WeftCore

/// A resolver for names outside the cluster zone (from the node's resolv.conf, say).
public struct DNSUpstream: Sendable, Hashable {
    public var address: IPAddress
    public var port: UInt16
    public init(address: IPAddress, port: UInt16 = 53) { self.address = address; self.port = port }
}

/// The node's DNS server: answers from a `ClusterDNS` zone over UDP and TCP (RFC 7766 framing)
/// on one address and port, and forwards other names to upstreams when there are any. All
/// decisions are `ClusterDNS.respond`'s; this is the I/O around it. Logs nothing per query.
///
///     let server = try await DNSServer.bind(host: "169.254.20.10", port: 53, zone: zone, upstreams: ups)
///     // in a ServiceGroup, or: try await server.run()   (returns when cancelled)
///     server.update(newZone)
public final class DNSServer: Service, Sendable {
    /// The bound port (useful when 0 was asked for).
    public let port: Int
    private let zone: Mutex<ClusterDNS>
    private let upstreams: [SocketAddress]
    private let group: any EventLoopGroup
    private let udp: NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>
    private let tcp: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
    private let forwardsInFlight = Mutex(0)

    /// How long a forwarded query may wait, over all upstreams, before SERVFAIL.
    public static let upstreamTimeout: Duration = .seconds(2)
    /// Forwarded UDP queries waiting at once; more get SERVFAIL at once, so a flood of
    /// queries for slow names cannot pile up without bound.
    static let maxForwardsInFlight = 1024
    /// An idle TCP connection is closed after this (RFC 7766 §6.2.3 asks for a limit).
    static let tcpIdleTimeout: TimeAmount = .seconds(10)

    private init(port: Int, zone: ClusterDNS, upstreams: [SocketAddress], group: any EventLoopGroup,
                 udp: NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>,
                 tcp: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>) {
        self.port = port; self.zone = Mutex(zone); self.upstreams = upstreams; self.group = group
        self.udp = udp; self.tcp = tcp
    }

    /// Binds UDP and TCP on `host`:`port` (port 0: a free port, the same for both). Fails at
    /// once when the address is taken. `run()` then serves; until it does, nothing is read.
    public static func bind(host: String, port: Int, zone: ClusterDNS, upstreams: [DNSUpstream] = [],
                            group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> DNSServer {
        let ups = try upstreams.map { try SocketAddress(ipAddress: $0.address.description, port: Int($0.port)) }
        // With port 0 the UDP port picked may be taken for TCP: try a few.
        var attempt = 0
        while true {
            attempt += 1
            // No SO_REUSEADDR on UDP: on Linux it would let a second server share the port
            // and silently take part of the queries, instead of failing here.
            let udp = try await DatagramBootstrap(group: group)
                .bind(host: host, port: port) { ch in
                    ch.eventLoop.makeCompletedFuture {
                        // A send error must not end the server: swallow it before the async wrapper.
                        try ch.pipeline.syncOperations.addHandler(SwallowErrors())
                        return try NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>(wrappingChannelSynchronously: ch)
                    }
                }
            let bound = udp.channel.localAddress?.port ?? port
            do {
                let tcp = try await ServerBootstrap(group: group)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .bind(host: host, port: bound) { child in
                        child.eventLoop.makeCompletedFuture {
                            try child.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: DNSServer.tcpIdleTimeout))
                            try child.pipeline.syncOperations.addHandler(CloseWhenIdle())
                            try child.pipeline.syncOperations.addHandler(ByteToMessageHandler(LengthPrefixedFrames()))
                            return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: child)
                        }
                    }
                return DNSServer(port: bound, zone: zone, upstreams: ups, group: group, udp: udp, tcp: tcp)
            } catch {
                try? await udp.channel.close()
                if port != 0 || attempt >= 8 { throw error }
            }
        }
    }

    /// Replaces the zone; queries already being answered finish with the old one.
    public func update(_ zone: ClusterDNS) {
        self.zone.withLock { $0 = zone }
    }

    private var current: ClusterDNS { zone.withLock { $0 } }

    /// Serves until the task is cancelled (or a ServiceGroup shuts down gracefully), then
    /// closes both sockets. Call once.
    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { try await self.serveUDP() }
                    group.addTask { try await self.serveTCP() }
                }
            }
        } catch {
            // Being told to stop is the normal way out, whatever error the sockets end with.
            if Task.isCancelled { return }
            throw error
        }
    }

    private func serveUDP() async throws {
        try await udp.executeThenClose { inbound, outbound in
            try await withThrowingDiscardingTaskGroup { group in
                for try await datagram in inbound {
                    let packet = Array(buffer: datagram.data)
                    let client = datagram.remoteAddress
                    let action = current.respond(to: packet, overTCP: false, forwarding: !upstreams.isEmpty)
                    switch action {
                    case .reply(let bytes):
                        try? await outbound.write(AddressedEnvelope(remoteAddress: client, data: ByteBuffer(bytes: bytes)))
                    case .drop:
                        break
                    case .forward, .chase:
                        guard reserveForward() else {
                            if let busy = Self.serverFailure(for: action, limit: 512) {
                                try? await outbound.write(AddressedEnvelope(remoteAddress: client, data: ByteBuffer(bytes: busy)))
                            }
                            break
                        }
                        // Waits on an upstream: in its own task, so other queries go on.
                        group.addTask {
                            defer { self.forwardsInFlight.withLock { $0 -= 1 } }
                            if let bytes = await self.complete(action, packet: packet, overTCP: false) {
                                try? await outbound.write(AddressedEnvelope(remoteAddress: client, data: ByteBuffer(bytes: bytes)))
                            }
                        }
                    }
                }
            }
        }
    }

    private func reserveForward() -> Bool {
        forwardsInFlight.withLock {
            guard $0 < Self.maxForwardsInFlight else { return false }
            $0 += 1
            return true
        }
    }

    private func serveTCP() async throws {
        try await tcp.executeThenClose { inbound in
            try await withThrowingDiscardingTaskGroup { group in
                for try await connection in inbound {
                    group.addTask { await self.serve(connection) }
                }
            }
        }
    }

    /// One TCP connection: queries answered in order until the client closes or goes idle.
    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        try? await connection.executeThenClose { inbound, outbound in
            for try await frame in inbound {
                let packet = Array(buffer: frame)
                let action = current.respond(to: packet, overTCP: true, forwarding: !upstreams.isEmpty)
                guard let reply = await complete(action, packet: packet, overTCP: true) else { continue }
                var buffer = ByteBuffer()
                buffer.writeInteger(UInt16(reply.count))
                buffer.writeBytes(reply)
                try await outbound.write(buffer)
            }
        }
    }

    /// The bytes to send for `action`, asking upstreams when it says so.
    private func complete(_ action: ClusterDNS.Action, packet: [UInt8], overTCP: Bool) async -> [UInt8]? {
        switch action {
        case .reply(let bytes): return bytes
        case .drop: return nil
        case .forward(let query):
            let limit = query.replySizeLimit(overTCP: overTCP)
            guard let answer = await ask(packet, question: query.questions[0]) else {
                return Self.serverFailure(for: action, limit: limit)
            }
            var relayed = answer
            relayed[0] = UInt8(query.id >> 8)
            relayed[1] = UInt8(query.id & 0xff)
            if relayed.count <= limit { return relayed }
            let rcode = DNSResponseCode(rawValue: UInt16(relayed[3] & 0xf))
            return query.truncatedReply(rcode: rcode).encoded(limit: limit)
        case .chase(let reply, let target):
            let limit = (try? DNSMessage(parsing: packet))?.replySizeLimit(overTCP: overTCP) ?? 512
            // Our own query for the target: RD set, EDNS so the addresses fit.
            let q = DNSMessage.query(id: 0, name: target.name, type: target.type, edns: EDNS(udpPayloadSize: UInt16(DNSMessage.maxUDPPayload)))
            guard let bytes = await ask(q.encoded(), question: target), let upstream = try? DNSMessage(parsing: bytes) else {
                return reply.encoded(limit: limit)   // the CNAME alone: still true, just not complete
            }
            return ClusterDNS.completing(reply, with: upstream).encoded(limit: limit)
        }
    }

    private static func serverFailure(for action: ClusterDNS.Action, limit: Int) -> [UInt8]? {
        let query: DNSMessage
        switch action {
        case .forward(let q): query = q
        case .chase(let r, _): query = r
        default: return nil
        }
        var m = query.replyHeader(rcode: .serverFailure)
        m.recursionAvailable = true
        return m.encoded(limit: limit)
    }

    /// Sends `packet` to the upstreams in turn, sharing `upstreamTimeout` between them, and
    /// returns the first reply that matches (with the ID we sent).
    private func ask(_ packet: [UInt8], question: DNSQuestion) async -> [UInt8]? {
        let deadline = ContinuousClock.now + Self.upstreamTimeout
        for (i, upstream) in upstreams.enumerated() {
            let left = deadline - .now
            guard left > .zero else { break }
            if let reply = await exchange(packet, with: upstream, question: question, timeout: left / (upstreams.count - i)) {
                return reply
            }
        }
        return nil
    }

    /// One UDP exchange from a fresh socket (a random source port per query, with a random
    /// ID, is what makes spoofed answers hard to land).
    private func exchange(_ packet: [UInt8], with upstream: SocketAddress, question: DNSQuestion, timeout: Duration) async -> [UInt8]? {
        guard packet.count >= 12 else { return nil }
        let id = UInt16.random(in: .min ... .max)
        var out = packet
        out[0] = UInt8(id >> 8)
        out[1] = UInt8(id & 0xff)
        do {
            let local = try SocketAddress(ipAddress: upstream.protocol == .inet6 ? "::" : "0.0.0.0", port: 0)
            let channel = try await DatagramBootstrap(group: group)
                .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65535))
                .bind(to: local) { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHandler(SwallowErrors())
                        return try NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>(wrappingChannelSynchronously: ch)
                    }
                }
            return try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(AddressedEnvelope(remoteAddress: upstream, data: ByteBuffer(bytes: out)))
                return try await withThrowingTaskGroup(of: [UInt8]?.self) { race in
                    race.addTask {
                        for try await datagram in inbound where datagram.remoteAddress == upstream {
                            let bytes = Array(buffer: datagram.data)
                            if DNSMessage.isResponse(bytes, id: id, to: question) { return bytes }
                        }
                        return nil
                    }
                    race.addTask {
                        try await Task.sleep(for: timeout)
                        return nil
                    }
                    defer { race.cancelAll() }
                    return try await race.next() ?? nil
                }
            }
        } catch {
            return nil
        }
    }
}

/// RFC 1035 §4.2.2: each message over TCP is preceded by its length in two bytes.
struct LengthPrefixedFrames: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self),
              let frame = buffer.getSlice(at: buffer.readerIndex + 2, length: Int(length)) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 2 + Int(length))
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}

/// Closes a TCP connection on IdleStateHandler's read timeout.
final class CloseWhenIdle: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.fireChannelRead(data) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// Drops errors on a UDP socket (an ICMP error for one client, a refused send) so that the
/// async stream behind it, which would end on the first error, keeps serving.
final class SwallowErrors: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias InboundOut = AddressedEnvelope<ByteBuffer>

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.fireChannelRead(data) }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {}
}
