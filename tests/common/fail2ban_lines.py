#!/usr/bin/python3
"""fail2ban's verdict on every line of a log, in order, from fail2ban's own code.

    fail2ban_lines.py FILTER LOG      FILTER as fail2ban-regex takes it: sshd[mode=ddos]

Prints one line per log line: the address fail2ban counts a failure of, or "-". The lines go
through one Fail2banRegex object, as fail2ban-regex does with a file, so its multi-line memory
(sshd's sessions by PID: a locked account settled by the disconnect after it) is kept; unlike
fail2ban-regex, it says which line each failure came from. Needs Debian's fail2ban package
(run with /usr/bin/python3, whose modules it installs).
"""
import sys

from fail2ban.client.fail2banregex import Fail2banRegex, get_opt_parser


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    flt, log = sys.argv[1], sys.argv[2]
    opts, _ = get_opt_parser().parse_args(["-o", "ip", log, flt])
    regex = Fail2banRegex(opts)
    if not regex.readRegex(flt, "fail"):
        sys.exit("fail2ban could not read filter %s" % flt)
    out = []
    with open(log, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            _, found, _ = regex.testRegex(line.rstrip("\r\n"))
            out.append(" ".join(str(m[1]) for m in found) or "-")
    sys.stdout.write("".join(o + "\n" for o in out))


if __name__ == "__main__":
    main()
