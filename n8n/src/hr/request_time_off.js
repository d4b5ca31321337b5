// request_time_off(employee_id, start_date, end_date, reason?): file a paid-time-off request.
// Answers 200 {status: "pending_approval", reference: "PTO-XXXXXXXX", ...}; 422 with every problem.
const crypto = require('crypto');
const EMPLOYEES = {
  E1001: { name: 'Dana Smith', approver: 'Priya Patel', balance_days: 18 },
  E1002: { name: 'Luis Romero', approver: 'Priya Patel', balance_days: 4 },
  E1003: { name: 'Mei Chen', approver: 'Tom Becker', balance_days: 25 },
};
const MAX_SPAN_DAYS = 60;

const answer = (statusCode, body) => [{ json: { statusCode, body } }];
const args = $input.first().json.arguments;
const problems = [];
const parseDate = (name) => {
  const text = args[name];
  const match = typeof text === 'string' && /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  const date = match ? new Date(Date.UTC(+match[1], +match[2] - 1, +match[3])) : null;
  if (!date || date.toISOString().slice(0, 10) !== text) {
    problems.push(`${name} must be a date written YYYY-MM-DD`);
    return null;
  }
  return date;
};
const employeeId = typeof args.employee_id === 'string' ? args.employee_id.trim().toUpperCase() : '';
const employee = EMPLOYEES[employeeId];
if (!employee) problems.push(`unknown employee_id ${JSON.stringify(args.employee_id ?? null)}`);
const start = parseDate('start_date');
const end = parseDate('end_date');
if (args.reason !== undefined && args.reason !== null && typeof args.reason !== 'string') {
  problems.push('reason must be text');
}
let businessDays = 0;
if (start && end) {
  const spanDays = (end - start) / 86400000 + 1;
  if (spanDays < 1) problems.push('end_date must not be before start_date');
  else if (spanDays > MAX_SPAN_DAYS) problems.push(`a request may span at most ${MAX_SPAN_DAYS} days`);
  else {
    for (let day = new Date(start); day <= end; day.setUTCDate(day.getUTCDate() + 1)) {
      if (day.getUTCDay() !== 0 && day.getUTCDay() !== 6) businessDays += 1;
    }
    if (businessDays === 0) problems.push('the period holds no working day (Monday to Friday)');
  }
}
if (problems.length === 0 && businessDays > employee.balance_days) {
  problems.push(`${employee.name} has ${employee.balance_days} days of paid time off left, ${businessDays} requested`);
}
if (problems.length > 0) {
  return answer(422, { error: problems.join('; '), problems });
}
return answer(200, {
  status: 'pending_approval',
  reference: `PTO-${crypto.randomBytes(4).toString('hex').toUpperCase()}`,
  employee_id: employeeId,
  employee_name: employee.name,
  start_date: args.start_date,
  end_date: args.end_date,
  business_days: businessDays,
  reason: args.reason || null,
  approver: employee.approver,
  balance_after_days: employee.balance_days - businessDays,
});
