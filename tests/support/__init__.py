"""What tests share: waiting for a condition (more to come: golden PDUs, one
P-DATA builder, a TCP fault proxy). A test module imports from here, never
from another test module."""
