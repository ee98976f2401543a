import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif

/// Runs a program with a given environment and stdin, collecting stdout and stderr. Used to
/// call delegated IPAM plugins (the CNI protocol is exec + env + stdin/stdout).
public enum Subprocess {
    public struct Output: Sendable {
        public var status: Int32
        public var stdout: [UInt8]
        public var stderr: [UInt8]
        public init(status: Int32, stdout: [UInt8], stderr: [UInt8] = []) {
            self.status = status; self.stdout = stdout; self.stderr = stderr
        }
    }

    /// - timeout: if the program has not finished by then, it is killed (SIGKILL) and its exit
    ///   status reads as 128+9; what it wrote so far is returned. nil waits for ever.
    public static func run(_ path: String, arguments: [String] = [], environment: [String: String], stdin: [UInt8],
                           timeout: Duration? = nil) throws(SystemError) -> Output {
        var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard weft_pipe2_cloexec(&inPipe) == 0, weft_pipe2_cloexec(&outPipe) == 0, weft_pipe2_cloexec(&errPipe) == 0 else {
            throw SystemError("pipe")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }

        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, envp)
        close(inPipe[0]); close(outPipe[1]); close(errPipe[1])
        guard rc == 0 else {
            close(inPipe[1]); close(outPipe[0]); close(errPipe[0])
            throw SystemError("start \(path)", errno: rc)
        }

        // Small payloads (a CNI config, a result): write all, then drain both outputs. A
        // child that fills stderr before reading stdin could block; poll keeps both moving.
        var pending = stdin[...]
        var out: [UInt8] = [], err: [UInt8] = []
        var fds = [pollfd(fd: inPipe[1], events: Int16(POLLOUT), revents: 0),
                   pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0),
                   pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0)]
        if pending.isEmpty { close(inPipe[1]); fds[0].fd = -1 }
        var buf = [UInt8](repeating: 0, count: 16384)
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while fds[1].fd >= 0 || fds[2].fd >= 0 {
            var waitMs: Int32 = -1
            if let deadline {
                let left = deadline - ContinuousClock.now
                if left <= .zero {
                    // Killed; a grandchild may still hold the pipes, so stop reading too.
                    kill(pid, SIGKILL)
                    for k in 0...2 where fds[k].fd >= 0 { close(fds[k].fd); fds[k].fd = -1 }
                    break
                }
                let (s, atto) = left.components
                waitMs = Int32(min(s * 1000 + atto / 1_000_000_000_000_000 + 1, 60_000))
            }
            if retrying({ Int32(poll(&fds, nfds_t(fds.count), waitMs)) }) < 0 { break }
            if fds[0].fd >= 0 && fds[0].revents != 0 {
                let n = pending.withUnsafeBytes { write(inPipe[1], $0.baseAddress, $0.count) }
                if n > 0 { pending = pending.dropFirst(n) }
                if n < 0 || pending.isEmpty { close(inPipe[1]); fds[0].fd = -1 }
            }
            for k in 1...2 where fds[k].fd >= 0 && fds[k].revents != 0 {
                let n = buf.withUnsafeMutableBytes { read(fds[k].fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    if k == 1 { out += buf[0..<n] } else { err += buf[0..<n] }
                } else if n == 0 || errno != EINTR {
                    close(fds[k].fd); fds[k].fd = -1
                }
            }
        }
        if fds[0].fd >= 0 { close(fds[0].fd) }
        var status: Int32 = 0
        _ = retrying { waitpid(pid, &status, 0) }
        let exit = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Output(status: exit, stdout: out, stderr: err)
    }
}
